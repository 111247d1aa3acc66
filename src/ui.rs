//! Panels. Each reads a borrowed [`StudioCtx`] and emits [`Command`]s; none of them
//! mutates app state or does slow work (file dialogs, decoding, generation run elsewhere).

pub mod alerts;
pub mod create;
pub mod gallery;
pub mod mask;
pub mod metrics;
pub mod models;
pub mod settings;
pub mod text_to_image;
pub mod theme;
pub mod toast;
pub mod viewer;

use std::cell::RefCell;
use std::path::Path;

use crate::app::job_views::{GalleryItem, JobPhase, JobView, StepPreview};
use crate::app::state::{Command, SavedState};
use crate::app::thumbnails::Thumbnails;

/// What the Gallery shows: the last history listing and any pending delete confirmation.
#[derive(Debug, Default)]
pub struct GalleryView {
    pub items: Vec<GalleryItem>,
    /// False until the first listing arrived.
    pub loaded: bool,
    pub confirm_delete: Option<crate::app::state::JobKey>,
}

/// The per-frame context every panel gets.
pub struct StudioCtx<'a> {
    pub saved: &'a SavedState,
    /// Jobs of this session, oldest first.
    pub jobs: &'a [JobView],
    pub gallery: &'a GalleryView,
    /// The Create tab's selected input image.
    pub input: Option<&'a Path>,
    pub thumbs: &'a Thumbnails,
    pub data_dir: &'a Path,
    pub output_dir: &'a Path,
    /// Why generation is unavailable, if it is (shown instead of failing silently).
    pub engine_error: Option<&'a str>,
    pub monitoring: Monitoring<'a>,
    /// The Models tab's state (absent in panels built without it).
    pub models: Option<&'a crate::app::model_library::ModelsView>,
    /// Live step previews of running text→image jobs.
    pub previews: Option<&'a std::collections::HashMap<crate::app::state::JobKey, StepPreview>>,
    /// The Create tab's mask of the selected picture (absent in panels built without it).
    pub mask: Option<&'a crate::app::mask::MaskEditor>,
    /// The folder batch in progress: (folder name, finished, total).
    pub batch: Option<(String, usize, usize)>,
    commands: RefCell<Vec<Command>>,
}

/// Telemetry and the metrics endpoint, as the Metrics, Alerts and Settings tabs see them.
#[derive(Clone, Copy)]
pub struct Monitoring<'a> {
    /// The registry, or why it did not start.
    pub telemetry: Result<&'a orfeas_core::telemetry::Telemetry, &'a str>,
    /// Where `/metrics` and the API listen, while they do.
    pub endpoint_addr: Option<std::net::SocketAddr>,
    pub endpoint_error: Option<&'a str>,
    /// The Alertmanager URL of the running telemetry (`None`: not sending).
    pub alertmanager_in_use: Option<&'a str>,
    /// The fleet URLs jobs go to (`Ok(None)`: this machine), or why the fleet was not reached.
    pub fleet_in_use: Result<Option<&'a str>, &'a str>,
}

impl Default for Monitoring<'_> {
    fn default() -> Self {
        Monitoring {
            telemetry: Err("telemetry is not running"),
            endpoint_addr: None,
            endpoint_error: None,
            alertmanager_in_use: None,
            fleet_in_use: Ok(None),
        }
    }
}

impl<'a> StudioCtx<'a> {
    #[allow(clippy::too_many_arguments)] // a plain bundle of borrows, built in one place
    pub fn new(
        saved: &'a SavedState,
        jobs: &'a [JobView],
        gallery: &'a GalleryView,
        input: Option<&'a Path>,
        thumbs: &'a Thumbnails,
        data_dir: &'a Path,
        output_dir: &'a Path,
        engine_error: Option<&'a str>,
    ) -> Self {
        Self {
            saved,
            jobs,
            gallery,
            input,
            thumbs,
            data_dir,
            output_dir,
            engine_error,
            monitoring: Monitoring::default(),
            models: None,
            previews: None,
            mask: None,
            batch: None,
            commands: RefCell::new(Vec::new()),
        }
    }

    pub fn with_monitoring(mut self, monitoring: Monitoring<'a>) -> Self {
        self.monitoring = monitoring;
        self
    }

    pub fn with_batch(mut self, batch: Option<(String, usize, usize)>) -> Self {
        self.batch = batch;
        self
    }

    pub fn with_mask(mut self, mask: &'a crate::app::mask::MaskEditor) -> Self {
        self.mask = Some(mask);
        self
    }

    pub fn with_models(mut self, models: &'a crate::app::model_library::ModelsView) -> Self {
        self.models = Some(models);
        self
    }

    pub fn with_previews(
        mut self,
        previews: &'a std::collections::HashMap<crate::app::state::JobKey, StepPreview>,
    ) -> Self {
        self.previews = Some(previews);
        self
    }

    /// The live preview of job `key`, if one arrived.
    pub fn preview(&self, key: crate::app::state::JobKey) -> Option<&'a StepPreview> {
        self.previews.and_then(|p| p.get(&key))
    }

    pub fn send(&self, command: Command) {
        self.commands.borrow_mut().push(command);
    }

    pub fn into_commands(self) -> Vec<Command> {
        self.commands.into_inner()
    }
}

/// The running telemetry, or `None` after drawing a card titled `title` that
/// says why there is none. (The app repaints these tabs every second.)
pub fn telemetry_or_card_ui<'a>(
    ctx: &StudioCtx<'a>,
    ui: &mut egui::Ui,
    title: &str,
) -> Option<&'a orfeas_core::telemetry::Telemetry> {
    match ctx.monitoring.telemetry {
        Ok(t) => Some(t),
        Err(err) => {
            theme::card(ui.ctx()).show(ui, |ui| {
                section_heading_ui(ui, title);
                hint_ui(ui, err);
            });
            None
        }
    }
}

/// A small coloured state badge ("running", "failed", …).
pub fn phase_badge_ui(ui: &mut egui::Ui, phase: JobPhase) {
    let p = theme::palette(ui.ctx());
    let color = match phase {
        JobPhase::Queued => p.text_muted,
        JobPhase::Running => p.accent,
        JobPhase::Succeeded => p.success,
        JobPhase::Failed | JobPhase::Interrupted => p.danger,
        JobPhase::Cancelled => p.warning,
    };
    egui::Frame::new()
        .stroke(egui::Stroke::new(1.0, color))
        .corner_radius(egui::CornerRadius::same(theme::radius::SM))
        .inner_margin(egui::Margin::symmetric(6, 1))
        .show(ui, |ui| {
            ui.label(egui::RichText::new(phase.label()).small().color(color));
        });
}

/// A section heading with consistent spacing.
pub fn section_heading_ui(ui: &mut egui::Ui, text: &str) {
    ui.label(egui::RichText::new(text).heading());
    ui.add_space(theme::space::XS);
}

/// Muted helper text.
pub fn hint_ui(ui: &mut egui::Ui, text: &str) {
    let p = theme::palette(ui.ctx());
    ui.add(egui::Label::new(egui::RichText::new(text).color(p.text_muted)).wrap());
}
