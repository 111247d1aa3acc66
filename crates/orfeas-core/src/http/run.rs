//! Starting the API server with its safety checks, and `orfeas serve`'s
//! blocking run with a graceful drain on SIGTERM/Ctrl-C.

use std::path::Path;
use std::sync::Arc;

use super::api::{Api, OUTPUTS_DIR, UPLOADS_DIR};
use super::{HttpState, ServeConfig, ServeError, ServerHandle, auth, serve};
use crate::jobs::Engine;
use crate::telemetry::Telemetry;

/// Starts `/health`, `/metrics` and `/api/*` over `engine` and returns at once.
///
/// Refuses a bind other than 127.0.0.1/::1 without a token; creates
/// `uploads/` and `outputs/` in the data dir and removes temporary files a
/// killed process left there; then, when `requeue_on_start`, queues the jobs
/// the history holds as `queued` (the engine should use that data dir's history).
pub fn start(
    config: ServeConfig,
    telemetry: Telemetry,
    engine: Engine,
) -> Result<ServerHandle, ServeError> {
    let token = auth::resolve_token(config.token.as_deref(), config.token_file.as_deref())?;
    if token.is_none() && auth::bind_requires_token(&config.bind) {
        return Err(ServeError::TokenRequired {
            bind: config.bind.clone(),
        });
    }
    let data_dir = match &config.data_dir {
        Some(dir) => dir.clone(),
        None => crate::paths::data_dir().map_err(|e| ServeError::DataDir {
            dir: Default::default(),
            reason: e.to_string(),
        })?,
    };
    prepare_data_dir(&data_dir)?;
    let api =
        Api::new(&config, engine.clone(), &data_dir, token).map_err(|e| ServeError::DataDir {
            dir: data_dir.clone(),
            reason: e.to_string(),
        })?;
    let requeue = config.requeue_on_start;
    let state = HttpState {
        telemetry,
        api: Some(Arc::new(api)),
    };
    let handle = serve(config, state)?;
    if requeue {
        let n = engine.requeue_from_history().map_err(ServeError::Requeue)?;
        if n > 0 {
            tracing::info!("re-queued {n} jobs accepted before the last stop");
        }
    }
    Ok(handle)
}

/// `orfeas serve`: [`start`], block until SIGTERM or Ctrl-C, then drain: stop
/// accepting connections and give requests in progress `drain_timeout` to be
/// answered, then give running jobs `drain_timeout` to finish (then cancel
/// them), and leave queued jobs `queued` in the history for the next start.
pub fn run_server(
    config: ServeConfig,
    telemetry: Telemetry,
    engine: Engine,
) -> Result<(), ServeError> {
    let drain = config.drain_timeout;
    let handle = start(config, telemetry, engine.clone())?;
    tracing::info!("ORFEAS API listening on http://{}", handle.addr());
    wait_for_signal()?;
    tracing::info!(
        "stopping: no new requests; running jobs get {} s to finish",
        drain.as_secs()
    );
    handle.shutdown(drain);
    let report = engine.shutdown(drain);
    tracing::info!(
        cancelled = report.cancelled,
        still_running = report.still_running,
        left_queued = report.left_queued,
        "stopped; queued jobs run at the next start"
    );
    Ok(())
}

/// Blocks until the process gets SIGTERM, SIGINT or SIGHUP (Ctrl-C on Windows).
/// Installs a process-wide handler, so call it once per process.
pub fn wait_for_signal() -> Result<(), ServeError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    ctrlc::set_handler(move || {
        // A second signal while draining finds the channel full; that is fine.
        let _ = tx.try_send(());
    })
    .map_err(|e| ServeError::Signal(e.to_string()))?;
    rx.recv().map_err(|e| ServeError::Signal(e.to_string()))
}

/// Creates `uploads/` and `outputs/` and removes `.orfeas-*.tmp` files, the
/// remains of atomic writes cut short by a crash (never a finished output).
fn prepare_data_dir(data_dir: &Path) -> Result<(), ServeError> {
    for sub in [UPLOADS_DIR, OUTPUTS_DIR] {
        let dir = data_dir.join(sub);
        std::fs::create_dir_all(&dir).map_err(|e| ServeError::DataDir {
            dir: dir.clone(),
            reason: e.to_string(),
        })?;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".orfeas-")
                && name.ends_with(".tmp")
                && let Err(err) = std::fs::remove_file(entry.path())
            {
                tracing::warn!("cannot remove a stale temporary file {name}: {err}");
            }
        }
    }
    Ok(())
}
