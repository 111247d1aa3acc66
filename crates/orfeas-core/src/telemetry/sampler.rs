//! System sampling into the registry: CPU per core and total, memory, the data
//! dir's disk, uptime, and NVIDIA GPUs through NVML when a driver is present.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::metrics::Metrics;

/// Reads system resources; owned by the sampler thread.
pub struct SystemSampler {
    system: Option<sysinfo::System>,
    disks: Option<sysinfo::Disks>,
    data_dir: Option<PathBuf>,
    nvml: Option<nvml_wrapper::Nvml>,
    gpu_note: Option<String>,
    started: Instant,
}

/// The note the UI shows when there are no GPU series.
pub fn no_gpu_note(err: &dyn std::fmt::Display) -> String {
    format!(
        "No NVIDIA GPU metrics: NVML is not available ({err}); install the NVIDIA driver to see GPU usage."
    )
}

impl SystemSampler {
    pub fn new(data_dir: Option<PathBuf>, started: Instant) -> SystemSampler {
        let system = match sysinfo::System::new() {
            Ok(s) => Some(s),
            Err(err) => {
                tracing::warn!("system metrics unavailable: {err}");
                None
            }
        };
        let disks = match sysinfo::Disks::new_with_refreshed_list() {
            Ok(d) => Some(d),
            Err(err) => {
                tracing::warn!("disk metrics unavailable: {err}");
                None
            }
        };
        // NVML is loaded once; failure means "no GPU series", logged once.
        let (nvml, gpu_note) = match nvml_wrapper::Nvml::init() {
            Ok(n) => (Some(n), None),
            Err(err) => {
                let note = no_gpu_note(&err);
                tracing::info!("{note}");
                (None, Some(note))
            }
        };
        SystemSampler {
            system,
            disks,
            data_dir,
            nvml,
            gpu_note,
            started,
        }
    }

    pub fn gpu_note(&self) -> Option<&str> {
        self.gpu_note.as_deref()
    }

    /// Samples everything once into `m`.
    pub fn sample(&mut self, m: &Metrics) {
        m.app_uptime_seconds
            .set(self.started.elapsed().as_secs_f64());
        if let Some(sys) = self.system.as_mut() {
            sys.refresh_cpu_usage();
            for (i, cpu) in sys.cpus().iter().enumerate() {
                m.cpu_usage_percent
                    .with_label_values(&[&i.to_string()])
                    .set(f64::from(cpu.usage()).clamp(0.0, 100.0));
            }
            m.cpu_usage_percent
                .with_label_values(&["total"])
                .set(f64::from(sys.global_cpu_usage()).clamp(0.0, 100.0));
            sys.refresh_memory();
            let total = sys.total_memory() as f64;
            m.memory_usage_bytes
                .with_label_values(&["total"])
                .set(total);
            m.memory_usage_bytes
                .with_label_values(&["used"])
                .set(sys.used_memory() as f64);
            m.memory_usage_bytes
                .with_label_values(&["available"])
                .set(sys.available_memory() as f64);
        }
        if let (Some(disks), Some(dir)) = (self.disks.as_mut(), self.data_dir.as_deref()) {
            disks.refresh(false);
            if let Some(disk) = disk_for(disks, dir) {
                let total = disk.total_space() as f64;
                let free = disk.available_space() as f64;
                let mount = disk.mount_point().to_string_lossy();
                m.disk_usage_bytes
                    .with_label_values(&["total", &mount])
                    .set(total);
                m.disk_usage_bytes
                    .with_label_values(&["free", &mount])
                    .set(free);
                m.disk_usage_bytes
                    .with_label_values(&["used", &mount])
                    .set((total - free).max(0.0));
            }
        }
        if let Some(nvml) = self.nvml.as_ref() {
            sample_gpus(nvml, m);
        }
    }
}

/// The disk whose mount point is the longest prefix of `dir`.
fn disk_for<'d>(disks: &'d sysinfo::Disks, dir: &Path) -> Option<&'d sysinfo::Disk> {
    let dir = existing_ancestor(dir);
    disks
        .iter()
        .filter(|d| dir.starts_with(d.mount_point()))
        .max_by_key(|d| d.mount_point().as_os_str().len())
}

fn existing_ancestor(dir: &Path) -> PathBuf {
    let mut p = dir.to_path_buf();
    loop {
        if let Ok(c) = p.canonicalize() {
            return c;
        }
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
}

fn sample_gpus(nvml: &nvml_wrapper::Nvml, m: &Metrics) {
    let Ok(count) = nvml.device_count() else {
        return;
    };
    for i in 0..count {
        let Ok(device) = nvml.device_by_index(i) else {
            continue;
        };
        let gpu = i.to_string();
        if let Ok(util) = device.utilization_rates() {
            m.gpu_usage_percent
                .with_label_values(&[&gpu])
                .set(f64::from(util.gpu));
        }
        if let Ok(mem) = device.memory_info() {
            m.gpu_memory_bytes
                .with_label_values(&[&gpu, "total"])
                .set(mem.total as f64);
            m.gpu_memory_bytes
                .with_label_values(&[&gpu, "used"])
                .set(mem.used as f64);
            m.gpu_memory_bytes
                .with_label_values(&[&gpu, "free"])
                .set(mem.free as f64);
        }
    }
}
