//! Create tab: pick or drop an image, set parameters, generate, watch the queue.

use egui::{RichText, Vec2};

use crate::app::job_views::{JobPhase, JobView};
use orfeas_core::jobs::JobKind;

use crate::app::state::{
    Command, CreateMode, CreateParams, FormatChoice, MethodChoice, QualityChoice,
};
use crate::app::thumbnails::Thumb;
use crate::ui::theme::{self, space};
use crate::ui::{StudioCtx, hint_ui, phase_badge_ui, section_heading_ui};

pub fn create_tab_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    egui::Panel::right("create-queue")
        .resizable(true)
        .default_size(380.0)
        .size_range(300.0..=560.0)
        .show_separator_line(false)
        .frame(egui::Frame::new().inner_margin(egui::Margin {
            left: space::LG as i8,
            ..Default::default()
        }))
        .show(ui, |ui| {
            theme::card(ui.ctx()).show(ui, |ui| {
                ui.set_min_height(ui.available_height());
                queue_ui(ctx, ui);
            });
        });

    egui::Panel::left("create-params")
        .resizable(false)
        .exact_size(360.0)
        .show_separator_line(false)
        .frame(egui::Frame::new().inner_margin(egui::Margin {
            right: space::LG as i8,
            ..Default::default()
        }))
        .show(ui, |ui| {
            theme::card(ui.ctx()).show(ui, |ui| {
                ui.set_min_height(ui.available_height());
                mode_switch_ui(ctx, ui);
                ui.add_space(space::MD);
                egui::ScrollArea::vertical()
                    .id_salt("params-scroll")
                    .show(ui, |ui| match ctx.saved.mode {
                        CreateMode::ImageTo3d => params_ui(ctx, ui),
                        CreateMode::TextToImage => {
                            crate::ui::text_to_image::text_params_ui(ctx, ui)
                        }
                    });
            });
        });

    egui::CentralPanel::no_frame().show(ui, |ui| {
        theme::card(ui.ctx()).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.set_min_height(ui.available_height());
            match ctx.saved.mode {
                CreateMode::ImageTo3d => input_ui(ctx, ui),
                CreateMode::TextToImage => crate::ui::text_to_image::prompt_ui(ctx, ui),
            }
        });
    });
}

/// "Image to 3D | Text to image" at the top of the parameters.
fn mode_switch_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        for mode in CreateMode::ALL {
            let selected = ctx.saved.mode == mode;
            if ui
                .selectable_label(selected, RichText::new(mode.label()).size(15.0))
                .clicked()
                && !selected
            {
                ctx.send(Command::SetMode(mode));
            }
        }
    });
}

fn input_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    let p = theme::palette(ui.ctx());
    section_heading_ui(ui, "Image");
    if let Some(err) = ctx.engine_error {
        ui.colored_label(p.danger, err);
    }
    let zone_height = (ui.available_height() - 140.0).clamp(240.0, 520.0);
    let frame = egui::Frame::new()
        .fill(p.surface_alt)
        .stroke(egui::Stroke::new(1.5, p.border))
        .corner_radius(egui::CornerRadius::same(theme::radius::MD))
        .inner_margin(egui::Margin::same(space::MD as i8));
    frame.show(ui, |ui| {
        ui.set_width(ui.available_width());
        ui.set_min_height(zone_height);
        match ctx.input {
            None => {
                ui.vertical_centered(|ui| {
                    ui.add_space(zone_height / 2.0 - 48.0);
                    ui.label(RichText::new("Drop an image anywhere on the window").size(17.0));
                    ui.label(
                        RichText::new("PNG, JPEG or WebP · a clear subject on a plain or transparent background")
                            .color(p.text_muted),
                    );
                    ui.add_space(space::SM);
                    if ui.button("Open image…").clicked() {
                        ctx.send(Command::OpenFileDialog);
                    }
                });
            }
            Some(path) => {
                let row_height = 32.0;
                let toolbar = if ctx.mask.is_some() {
                    crate::ui::mask::TOOLBAR_HEIGHT
                } else {
                    0.0
                };
                if let Some(mask) = ctx.mask {
                    crate::ui::mask::mask_toolbar_ui(ctx, ui, mask);
                    ui.add_space(space::XS);
                }
                let preview = Vec2::new(
                    ui.available_width(),
                    zone_height - row_height - toolbar - space::SM,
                );
                ui.vertical_centered(|ui| {
                    let painted = ctx
                        .mask
                        .is_some_and(|mask| crate::ui::mask::mask_canvas_ui(ctx, ui, mask, preview));
                    if !painted {
                        preview_ui(ctx, ui, path, preview);
                    }
                });
                ui.add_space(space::SM);
                ui.horizontal(|ui| {
                    let name = path
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| path.display().to_string());
                    ui.label(RichText::new(name).strong());
                    ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                        if ui.button("Open image…").clicked() {
                            ctx.send(Command::OpenFileDialog);
                        }
                        ui.add(
                            egui::Label::new(
                                RichText::new(path.display().to_string())
                                    .small()
                                    .color(p.text_muted),
                            )
                            .truncate(),
                        );
                    });
                });
            }
        }
    });
    ui.add_space(space::MD);
    ui.horizontal(|ui| {
        let enabled = ctx.input.is_some() && ctx.engine_error.is_none();
        let button = ui.add_enabled(
            enabled,
            theme::primary_button(ui.ctx(), "Generate 3D model"),
        );
        if button.clicked()
            && let Some(path) = ctx.input
        {
            ctx.send(Command::Generate {
                input: path.to_path_buf(),
            });
        }
        let p = theme::palette(ui.ctx());
        let hint = if ctx.input.is_none() {
            "Choose an image first.".to_owned()
        } else {
            format!(
                "{} quality · {} · saved to {}",
                ctx.saved.params.quality.label(),
                ctx.saved.params.format.label(),
                ctx.output_dir.display()
            )
        };
        // Truncated, not wrapped: a long output path must not widen the card.
        ui.add(egui::Label::new(RichText::new(hint).color(p.text_muted)).truncate());
    });
    if let Some(job) = ctx.jobs.iter().rev().find(|j| {
        j.kind == JobKind::ImageTo3d && matches!(j.phase, JobPhase::Running | JobPhase::Queued)
    }) {
        ui.add_space(space::SM);
        ui.horizontal(|ui| {
            let cancel_width = 80.0;
            let text = if job.phase == JobPhase::Queued {
                "Waiting for a free worker…".to_owned()
            } else {
                format!("{} — {:.0}%", job.stage, job.fraction * 100.0)
            };
            ui.add(
                egui::ProgressBar::new(job.fraction)
                    .text(text)
                    .desired_width((ui.available_width() - cancel_width).max(80.0)),
            );
            if ui.button("Cancel").clicked() {
                ctx.send(Command::Cancel(job.key));
            }
        });
    }
}

pub(crate) fn preview_ui(
    ctx: &StudioCtx<'_>,
    ui: &mut egui::Ui,
    path: &std::path::Path,
    size: Vec2,
) {
    let p = theme::palette(ui.ctx());
    match ctx.thumbs.get(path) {
        Thumb::Ready(texture) => {
            ui.add(
                egui::Image::new(&texture)
                    .max_size(size)
                    .maintain_aspect_ratio(true)
                    .corner_radius(theme::radius::SM)
                    .alt_text("Input image preview"),
            );
        }
        Thumb::Loading => {
            ui.allocate_ui(size, |ui| {
                ui.centered_and_justified(|ui| ui.spinner());
            });
        }
        Thumb::Failed(err) => {
            ui.allocate_ui(size, |ui| {
                ui.centered_and_justified(|ui| {
                    ui.colored_label(p.warning, format!("No preview: {err}"));
                });
            });
        }
    }
}

fn params_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    section_heading_ui(ui, "Parameters");
    let mut params: CreateParams = ctx.saved.params.clone();
    ui.spacing_mut().slider_width = 100.0;
    ui.spacing_mut().combo_width = 120.0;
    egui::Grid::new("create-params")
        .num_columns(2)
        .spacing([space::MD, space::SM])
        .show(ui, |ui| {
            let label = ui.label("Method");
            egui::ComboBox::from_id_salt("method")
                .selected_text(params.method.label())
                .show_ui(ui, |ui| {
                    for m in MethodChoice::ALL {
                        let mut text = m.label().to_owned();
                        if m == MethodChoice::TripoSr && triposr_installed(ctx) == Some(false) {
                            text.push_str("  (not installed)");
                        }
                        ui.selectable_value(&mut params.method, m, text);
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text(
                    "Inflate puffs up the silhouette and needs no weights; TripoSR reconstructs \
                     the hidden sides with a learnt model (download it on the Models tab).",
                );
            ui.end_row();
            if params.method == MethodChoice::TripoSr {
                let label = ui.label("Detail (grid)");
                ui.add(
                    egui::Slider::new(&mut params.mc_resolution, 64..=512)
                        .step_by(32.0)
                        .suffix("³"),
                )
                .labelled_by(label.id)
                .on_hover_text("Points per axis of the density grid the surface is drawn from; time grows with its cube.");
                ui.end_row();
            }

            let label = ui.label("Background");
            egui::ComboBox::from_id_salt("background")
                .selected_text(background_label(params.background))
                .show_ui(ui, |ui| {
                    for b in orfeas_core::request::Background::ALL {
                        ui.selectable_value(&mut params.background, b, background_label(b));
                    }
                })
                .response
                .labelled_by(label.id)
                .on_hover_text(
                    "What is cut away before meshing: Auto uses the picture's transparency, \
                     else the neural segmenter when installed, else the border colour. \
                     The picture shows the result; paint over it to fix it.",
                );
            ui.end_row();

            let label = ui.label("Quality");
            egui::ComboBox::from_id_salt("quality")
                .selected_text(params.quality.label())
                .show_ui(ui, |ui| {
                    for q in QualityChoice::ALL {
                        ui.selectable_value(&mut params.quality, q, q.label());
                    }
                })
                .response
                .labelled_by(label.id);
            ui.end_row();

            let label = ui.label("Output format");
            egui::ComboBox::from_id_salt("format")
                .selected_text(params.format.label())
                .show_ui(ui, |ui| {
                    for f in FormatChoice::ALL {
                        ui.selectable_value(&mut params.format, f, f.label());
                    }
                })
                .response
                .labelled_by(label.id);
            ui.end_row();

            slider_row(ui, "Foreground ratio", &mut params.foreground_ratio, 0.5..=1.0,
                "How much of the frame the subject fills before inflation.");
            let label = ui.label("Alpha threshold");
            ui.add(egui::Slider::new(&mut params.mask_threshold, 1..=255))
                .labelled_by(label.id)
                .on_hover_text("For images with transparency: alpha at or above this is the subject.");
            ui.end_row();
            slider_row(ui, "Background tolerance", &mut params.border_tolerance, 0.0..=1.0,
                "For opaque images: how far a colour may be from the border colour and still count as background.");
            let label = ui.label("Erode edge (px)");
            ui.add(egui::Slider::new(&mut params.erode_px, 0..=64))
                .labelled_by(label.id)
                .on_hover_text("Shave this many pixels off the silhouette edge (removes halos).");
            ui.end_row();
            let label = ui.label("Smoothing passes");
            ui.add(egui::Slider::new(&mut params.smooth_iterations, 0..=50))
                .labelled_by(label.id)
                .on_hover_text("Smoothing passes over the finished mesh (0 = off).");
            ui.end_row();
            slider_row(ui, "Keep faces", &mut params.decimate_ratio, 0.1..=1.0,
                "Share of faces kept by decimation; 1.0 keeps all.");
        });
    ui.add_space(space::SM);
    if ui.button("Reset to defaults").clicked() {
        params = CreateParams {
            quality: ctx.saved.settings.default_quality,
            format: ctx.saved.settings.default_format,
            ..CreateParams::default()
        };
    }
    if params != ctx.saved.params {
        ctx.send(Command::SetParams(params));
    }
}

pub(crate) fn background_label(b: orfeas_core::request::Background) -> &'static str {
    use orfeas_core::request::Background;
    match b {
        Background::Auto => "Auto",
        Background::Alpha => "Transparency",
        Background::Neural => "Neural segmenter",
        Background::Border => "Border colour",
        Background::None => "None (whole picture)",
    }
}

/// Whether the TripoSR weights are installed (`None` while the Models list loads).
fn triposr_installed(ctx: &StudioCtx<'_>) -> Option<bool> {
    let rows = &ctx.models?.rows;
    rows.iter().find(|r| r.name == "triposr").map(|r| {
        matches!(
            r.install,
            crate::app::model_library::ModelInstall::Installed { .. }
        )
    })
}

fn slider_row(
    ui: &mut egui::Ui,
    text: &str,
    value: &mut f32,
    range: std::ops::RangeInclusive<f32>,
    hover: &str,
) {
    let label = ui.label(text);
    ui.add(egui::Slider::new(value, range).fixed_decimals(2))
        .labelled_by(label.id)
        .on_hover_text(hover);
    ui.end_row();
}

fn queue_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        section_heading_ui(ui, "Queue");
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            let any_finished = ctx.jobs.iter().any(|j| j.phase.is_finished());
            if ui
                .add_enabled(any_finished, egui::Button::new("Clear finished"))
                .clicked()
            {
                ctx.send(Command::ClearFinished);
            }
        });
    });
    if ctx.jobs.is_empty() {
        hint_ui(
            ui,
            "No jobs yet. Generated models appear here while they run, then in the Gallery.",
        );
        return;
    }
    egui::ScrollArea::vertical()
        .id_salt("queue-scroll")
        .auto_shrink([false, false])
        .show(ui, |ui| {
            for job in ctx.jobs.iter().rev() {
                job_row_ui(ctx, ui, job);
                ui.separator();
            }
        });
}

fn job_row_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui, job: &JobView) {
    let p = theme::palette(ui.ctx());
    ui.horizontal(|ui| {
        phase_badge_ui(ui, job.phase);
        ui.label(RichText::new(&job.label).strong());
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            if !job.phase.is_finished() && ui.small_button("Cancel").clicked() {
                ctx.send(Command::Cancel(job.key));
            }
            if let Some(secs) = job.duration_secs {
                ui.label(
                    RichText::new(format!("{:.1} s", secs))
                        .small()
                        .color(p.text_muted),
                );
            }
        });
    });
    match job.phase {
        JobPhase::Running | JobPhase::Queued => {
            ui.add(
                egui::ProgressBar::new(job.fraction)
                    .text(if job.stage.is_empty() {
                        job.phase.label().to_owned()
                    } else {
                        format!("{} — {:.0}%", job.stage, job.fraction * 100.0)
                    })
                    .desired_height(16.0),
            );
        }
        JobPhase::Succeeded => {
            if let Some(out) = job.outputs.first() {
                ui.horizontal(|ui| {
                    ui.label(
                        RichText::new(
                            out.file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default(),
                        )
                        .small()
                        .color(p.text_muted),
                    );
                    if let Some(dir) = out.parent()
                        && ui.small_button("Show in folder").clicked()
                    {
                        ctx.send(Command::OpenFolder(dir.to_path_buf()));
                    }
                    if let Some(image) = job.image_output()
                        && ui
                            .small_button("Make 3D")
                            .on_hover_text("Turn this image into a 3D model")
                            .clicked()
                    {
                        ctx.send(Command::MakeThreeD(image.to_path_buf()));
                    }
                });
            }
            if !job.message.is_empty() {
                ui.label(RichText::new(&job.message).small().color(p.text_muted));
            }
        }
        JobPhase::Failed | JobPhase::Interrupted | JobPhase::Cancelled => {
            if let Some(err) = &job.error {
                ui.add(egui::Label::new(RichText::new(err).small().color(p.danger)).wrap());
            }
        }
    }
}
