//! The Create tab's text→image mode: the prompt card with live step previews and
//! results, and the parameters (model, style, steps, guidance, seed, size, batch).

use egui::{RichText, Vec2};
use orfeas_core::jobs::JobKind;
use orfeas_ml::models::KNOWN_MODELS;
use orfeas_ml::sd::schedulers::SchedulerKind;
use orfeas_ml::sd::single_file::has_checkpoint_name;
use orfeas_ml::text_to_image::{MAX_BATCH, MAX_GUIDANCE, MAX_STEPS, STYLE_PRESETS};

use crate::app::job_views::{JobPhase, JobView};
use crate::app::model_library::ModelInstall;
use crate::app::state::{Command, DecoderChoice, TextParams};
use crate::app::thumbnails::Thumb;
use crate::ui::theme::{self, space};
use crate::ui::{StudioCtx, hint_ui, section_heading_ui};

/// Sizes offered in the picker (width, height); all multiples of 64.
const SIZES: [(usize, usize); 7] = [
    (256, 256),
    (512, 512),
    (512, 768),
    (768, 512),
    (768, 768),
    (1024, 1024),
    (1024, 576),
];

fn scheduler_label(s: Option<SchedulerKind>) -> &'static str {
    match s {
        None => "Model default",
        Some(SchedulerKind::Euler) => "Euler",
        Some(SchedulerKind::EulerAncestral) => "Euler ancestral",
        Some(SchedulerKind::Ddim) => "DDIM",
        Some(SchedulerKind::DpmSolverPp2m) => "DPM-Solver++ 2M",
    }
}

/// What the model picker shows for the current choice.
fn model_text(t: &TextParams) -> String {
    match &t.model_path {
        Some(dir) => format!(
            "{}: {}",
            if has_checkpoint_name(dir) {
                "Checkpoint"
            } else {
                "Folder"
            },
            dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            )
        ),
        None => t.model.clone(),
    }
}

/// Is the registry model `name` installed, as far as the last Models listing knows?
fn installed(ctx: &StudioCtx<'_>, name: &str) -> Option<bool> {
    let rows = &ctx.models?.rows;
    rows.iter()
        .find(|r| r.name == name)
        .map(|r| matches!(r.install, ModelInstall::Installed { .. }))
}

pub fn text_params_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    let p = theme::palette(ui.ctx());
    section_heading_ui(ui, "Parameters");
    let mut t = ctx.saved.text.clone();
    ui.spacing_mut().slider_width = 110.0;
    ui.spacing_mut().combo_width = 170.0;
    egui::Grid::new("text-params")
        .num_columns(2)
        .spacing([space::MD, space::SM])
        .show(ui, |ui| {
            let label = ui.label("Model");
            egui::ComboBox::from_id_salt("t2i-model")
                .selected_text(model_text(&t))
                .show_ui(ui, |ui| {
                    for m in KNOWN_MODELS
                        .iter()
                        .filter(|m| m.architecture.generates_images())
                    {
                        let mut text = m.name.to_owned();
                        if installed(ctx, m.name) == Some(false) {
                            text.push_str("  (not installed)");
                        }
                        let selected = t.model_path.is_none() && t.model == m.name;
                        if ui.selectable_label(selected, text).clicked() && !selected {
                            t = t.with_model_defaults(m.name);
                        }
                    }
                    // By name: these run every frame, so no file-system calls.
                    let folder = t
                        .model_path
                        .as_ref()
                        .is_some_and(|d| !has_checkpoint_name(d));
                    if ui
                        .selectable_label(folder, "Model folder...")
                        .on_hover_text("A diffusers-format folder (with model_index.json)")
                        .clicked()
                    {
                        ctx.send(Command::PickModelFolder);
                    }
                    let file = t
                        .model_path
                        .as_ref()
                        .is_some_and(|d| has_checkpoint_name(d));
                    if ui
                        .selectable_label(file, "Checkpoint file...")
                        .on_hover_text("An SD 1.x or SDXL single-file .safetensors checkpoint")
                        .clicked()
                    {
                        ctx.send(Command::PickModelCheckpoint);
                    }
                })
                .response
                .labelled_by(label.id);
            ui.end_row();

            let label = ui.label("Style");
            let style_label = STYLE_PRESETS
                .iter()
                .find(|s| s.key == t.style)
                .map_or("None", |s| s.label);
            egui::ComboBox::from_id_salt("t2i-style")
                .selected_text(style_label)
                .show_ui(ui, |ui| {
                    for s in &STYLE_PRESETS {
                        ui.selectable_value(&mut t.style, s.key.to_owned(), s.label)
                            .on_hover_text(if s.prompt_suffix.is_empty() {
                                "The prompt as written."
                            } else {
                                s.prompt_suffix
                            });
                    }
                })
                .response
                .labelled_by(label.id);
            ui.end_row();

            let label = ui.label("Steps");
            ui.add(egui::Slider::new(&mut t.steps, 1..=MAX_STEPS.min(100)).logarithmic(true))
                .labelled_by(label.id)
                .on_hover_text("Denoising steps. SD-Turbo: 1-4; SD 1.5: 20-50.");
            ui.end_row();

            let label = ui.label("Guidance");
            ui.add(
                egui::Slider::new(&mut t.guidance, 0.0..=MAX_GUIDANCE.min(20.0)).fixed_decimals(1),
            )
            .labelled_by(label.id)
            .on_hover_text(
                "How strongly the prompt steers (classifier-free guidance; above 1 also uses \
                     the negative prompt). SD-Turbo: 0.",
            );
            ui.end_row();

            let label = ui.label("Seed");
            ui.horizontal(|ui| {
                ui.add(egui::DragValue::new(&mut t.seed).range(0..=u64::from(u32::MAX)))
                    .labelled_by(label.id);
                if ui
                    .small_button("Random")
                    .on_hover_text("Roll a new seed now")
                    .clicked()
                {
                    t.seed = u64::from(rand::random::<u32>());
                }
                ui.checkbox(&mut t.seed_locked, "Lock")
                    .on_hover_text("Keep this seed; unlocked, every Generate rolls a new one");
            });
            ui.end_row();

            let label = ui.label("Size");
            egui::ComboBox::from_id_salt("t2i-size")
                .selected_text(format!("{} x {}", t.width, t.height))
                .show_ui(ui, |ui| {
                    for (w, h) in SIZES {
                        let selected = (t.width, t.height) == (w, h);
                        if ui
                            .selectable_label(selected, format!("{w} x {h}"))
                            .clicked()
                        {
                            (t.width, t.height) = (w, h);
                        }
                    }
                })
                .response
                .labelled_by(label.id);
            ui.end_row();

            let label = ui.label("Batch");
            ui.add(egui::Slider::new(&mut t.batch, 1..=MAX_BATCH.min(8)))
                .labelled_by(label.id)
                .on_hover_text("Images per Generate, with consecutive seeds.");
            ui.end_row();

            let label = ui.label("Scheduler");
            egui::ComboBox::from_id_salt("t2i-scheduler")
                .selected_text(scheduler_label(t.scheduler))
                .show_ui(ui, |ui| {
                    ui.selectable_value(&mut t.scheduler, None, scheduler_label(None));
                    for k in SchedulerKind::ALL {
                        ui.selectable_value(&mut t.scheduler, Some(k), scheduler_label(Some(k)));
                    }
                })
                .response
                .labelled_by(label.id);
            ui.end_row();

            let label = ui.label("Start image");
            ui.horizontal(|ui| {
                match &t.init_image {
                    Some(path) => {
                        let name = path.file_name().map_or_else(
                            || path.display().to_string(),
                            |n| n.to_string_lossy().into_owned(),
                        );
                        ui.label(RichText::new(name).monospace())
                            .labelled_by(label.id)
                            .on_hover_text(path.display().to_string());
                        if ui
                            .small_button("Clear")
                            .on_hover_text("Start from noise again")
                            .clicked()
                        {
                            t.init_image = None;
                        }
                    }
                    None => {
                        ui.label(RichText::new("none (noise)").color(p.text_muted))
                            .labelled_by(label.id);
                    }
                }
                if ui
                    .small_button("Choose...")
                    .on_hover_text(
                        "Image to image: start from a picture (cropped to the size's aspect)",
                    )
                    .clicked()
                {
                    ctx.send(Command::PickInitImage);
                }
            });
            ui.end_row();
            if t.init_image.is_some() {
                let label = ui.label("Strength");
                ui.add(egui::Slider::new(&mut t.strength, 0.05..=1.0).fixed_decimals(2))
                    .labelled_by(label.id)
                    .on_hover_text(
                        "How much of the schedule runs over the picture: 0.3 keeps most of \
                         it, 0.8 little. Steps run = steps x strength.",
                    );
                ui.end_row();
            }

            let label = ui.label("Decoder");
            egui::ComboBox::from_id_salt("t2i-decoder")
                .selected_text(t.decoder.label())
                .show_ui(ui, |ui| {
                    for d in DecoderChoice::ALL {
                        ui.selectable_value(&mut t.decoder, d, d.label())
                            .on_hover_text(d.hint());
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text(t.decoder.hint());
            ui.end_row();
        });
    ui.add_space(space::SM);
    if t.model_path.is_none()
        && let Some(m) = KNOWN_MODELS.iter().find(|m| m.name == t.model)
    {
        let color = if m.non_commercial {
            p.warning
        } else {
            p.text_muted
        };
        ui.add(egui::Label::new(RichText::new(m.licence).small().color(color)).wrap());
        if installed(ctx, m.name) == Some(false) {
            ui.horizontal(|ui| {
                ui.label(RichText::new("Not installed.").small().color(p.warning));
                if ui.small_button("Open Models").clicked() {
                    ctx.send(Command::SelectTab(crate::app::state::Tab::Models));
                }
            });
        }
    }
    ui.add_space(space::SM);
    if ui.button("Model defaults").clicked() {
        t = if let Some(dir) = t.model_path.clone() {
            t.with_path_defaults(&dir)
        } else {
            t.with_model_defaults(&t.model.clone())
        };
    }
    ui.add_space(space::SM);
    hint_ui(
        ui,
        "Drop a PNG made here or in A1111 on the window to load its settings.",
    );
    if t != ctx.saved.text {
        ctx.send(Command::SetTextParams(t));
    }
}

pub fn prompt_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    let p = theme::palette(ui.ctx());
    section_heading_ui(ui, "Prompt");
    if let Some(err) = ctx.engine_error {
        ui.colored_label(p.danger, err);
    }
    let mut t = ctx.saved.text.clone();
    let prompt = ui.add(
        egui::TextEdit::multiline(&mut t.prompt)
            .hint_text("Describe the picture: a red ceramic teapot on a white table, studio light")
            .desired_rows(3)
            .desired_width(f32::INFINITY),
    );
    let prompt_id = prompt.id;
    ui.add_space(space::XS);
    ui.add(
        egui::TextEdit::singleline(&mut t.negative)
            .hint_text("Negative prompt (what to avoid; used when guidance > 1)")
            .desired_width(f32::INFINITY),
    );
    // Ctrl+Enter in the prompt generates.
    let submit = ui.ctx().memory(|m| m.has_focus(prompt_id))
        && ui.input(|i| i.key_pressed(egui::Key::Enter) && i.modifiers.command);
    if t != ctx.saved.text {
        ctx.send(Command::SetTextParams(t.clone()));
    }
    ui.add_space(space::MD);
    ui.horizontal(|ui| {
        let enabled = !t.prompt.trim().is_empty() && ctx.engine_error.is_none();
        let button = ui.add_enabled(enabled, theme::primary_button(ui.ctx(), "Generate image"));
        if enabled && (button.clicked() || submit) {
            ctx.send(Command::GenerateImage);
        }
        let hint = if t.prompt.trim().is_empty() {
            "Write a prompt first.".to_owned()
        } else {
            format!(
                "{} · {} step{} · {} x {} · seed {}{}",
                model_text(&t),
                t.steps,
                if t.steps == 1 { "" } else { "s" },
                t.width,
                t.height,
                if t.seed_locked {
                    t.seed.to_string()
                } else {
                    "random".to_owned()
                },
                if t.batch > 1 {
                    format!(" · {} images", t.batch)
                } else {
                    String::new()
                }
            )
        };
        ui.add(egui::Label::new(RichText::new(hint).color(p.text_muted)).truncate());
    });
    ui.add_space(space::MD);
    result_ui(ctx, ui);
}

/// The running job's live preview, else the newest finished images of this session.
fn result_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    let p = theme::palette(ui.ctx());
    // The page colour, not `surface_alt`: the progress bar's track is `surface_alt`.
    let frame = egui::Frame::new()
        .fill(p.bg)
        .stroke(egui::Stroke::new(1.0, p.border))
        .corner_radius(egui::CornerRadius::same(theme::radius::MD))
        .inner_margin(egui::Margin::same(space::MD as i8));
    let height = (ui.available_height() - 2.0 * space::MD).max(200.0);
    frame.show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.set_min_height(height);
        // Square, as large as the frame allows in both directions.
        let image_side = (height - 60.0).min(ui.available_width()).max(96.0);
        let text_jobs = || {
            ctx.jobs
                .iter()
                .rev()
                .filter(|j| j.kind == JobKind::TextToImage)
        };
        if let Some(job) = text_jobs().find(|j| !j.phase.is_finished()) {
            running_ui(ctx, ui, job, image_side);
        } else if let Some(job) = text_jobs().find(|j| j.phase.is_finished()) {
            finished_ui(ctx, ui, job, image_side);
        } else {
            ui.vertical_centered(|ui| {
                ui.add_space(height / 2.0 - 30.0);
                hint_ui(
                    ui,
                    "Your images appear here, step by step while they generate. \
                     Any of them can be turned into a 3D model.",
                );
            });
        }
    });
}

fn running_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui, job: &JobView, side: f32) {
    ui.horizontal(|ui| {
        let text = match job.phase {
            JobPhase::Queued => "Waiting for a free worker…".to_owned(),
            _ if job.stage.is_empty() => "starting".to_owned(),
            _ => format!("{} {:.0}%", job.stage, job.fraction * 100.0),
        };
        ui.add(
            egui::ProgressBar::new(job.fraction)
                .text(text)
                .desired_width((ui.available_width() - 80.0).max(80.0)),
        );
        if ui.button("Cancel").clicked() {
            ctx.send(Command::Cancel(job.key));
        }
    });
    ui.add_space(space::SM);
    ui.vertical_centered(|ui| match ctx.preview(job.key) {
        Some(preview) => {
            ui.add(
                egui::Image::new(&preview.texture)
                    .fit_to_exact_size(Vec2::splat(side))
                    .maintain_aspect_ratio(true)
                    .corner_radius(theme::radius::SM)
                    .alt_text("Step preview"),
            );
            ui.label(
                RichText::new(format!(
                    "Preview after step {} of {} (a quick approximation of the latents)",
                    preview.step, preview.total
                ))
                .small()
                .color(theme::palette(ui.ctx()).text_muted),
            );
        }
        None => {
            ui.allocate_ui(Vec2::splat(side.min(240.0)), |ui| {
                ui.centered_and_justified(|ui| ui.spinner());
            });
        }
    });
}

fn finished_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui, job: &JobView, side: f32) {
    let p = theme::palette(ui.ctx());
    if job.phase != JobPhase::Succeeded {
        ui.colored_label(
            p.danger,
            format!(
                "{}: {}",
                job.phase.label(),
                job.error.as_deref().unwrap_or("no image")
            ),
        );
        return;
    }
    let images: Vec<&std::path::Path> = job
        .outputs
        .iter()
        .map(std::path::PathBuf::as_path)
        .filter(|o| o.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")))
        .collect();
    let n = images.len().max(1) as f32;
    let cell = ((ui.available_width() - (n - 1.0) * space::SM) / n)
        .min(side)
        .max(96.0);
    ui.horizontal_wrapped(|ui| {
        for path in &images {
            ui.vertical(|ui| {
                match ctx.thumbs.get(path) {
                    Thumb::Ready(texture) => {
                        ui.add(
                            egui::Image::new(&texture)
                                .fit_to_exact_size(Vec2::splat(cell))
                                .maintain_aspect_ratio(true)
                                .corner_radius(theme::radius::SM)
                                .alt_text("Generated image"),
                        );
                    }
                    Thumb::Loading => {
                        ui.allocate_ui(Vec2::splat(cell), |ui| {
                            ui.centered_and_justified(|ui| ui.spinner());
                        });
                    }
                    Thumb::Failed(err) => {
                        ui.colored_label(p.warning, format!("No preview: {err}"));
                    }
                }
                ui.horizontal(|ui| {
                    generated_image_actions_ui(ctx, ui, path);
                    if let Some(dir) = path.parent()
                        && ui.button("Show in folder").clicked()
                    {
                        ctx.send(Command::OpenFolder(dir.to_path_buf()));
                    }
                });
            });
        }
    });
    if !job.message.is_empty() {
        ui.label(RichText::new(&job.message).small().color(p.text_muted));
    }
}

/// "Make 3D" and "Vary" for a generated image (result panel and Gallery cards).
pub fn generated_image_actions_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui, image: &std::path::Path) {
    if ui
        .button("Make 3D")
        .on_hover_text("Turn this image into a 3D model")
        .clicked()
    {
        ctx.send(Command::MakeThreeD(image.to_path_buf()));
    }
    if ui
        .button("Vary")
        .on_hover_text("Start a new image from this one (image to image)")
        .clicked()
    {
        ctx.send(Command::VaryImage(image.to_path_buf()));
    }
}
