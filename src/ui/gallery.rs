//! Gallery tab: the history database as cards with thumbnails and actions.

use egui::{RichText, Vec2};

use crate::app::job_views::{GalleryItem, JobPhase};
use crate::app::state::{Command, FormatChoice};
use crate::app::thumbnails::Thumb;
use crate::ui::theme::{self, space};
use crate::ui::{StudioCtx, hint_ui, phase_badge_ui, section_heading_ui};

const CARD_WIDTH: f32 = 260.0;
const THUMB_SIDE: f32 = 160.0;

pub fn gallery_tab_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        section_heading_ui(ui, "Gallery");
        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
            if ui.button("Refresh").clicked() {
                ctx.send(Command::RefreshGallery);
            }
            if ui.button("Open output folder").clicked() {
                ctx.send(Command::OpenFolder(ctx.output_dir.to_path_buf()));
            }
            if ui
                .button("Open folder as batch…")
                .on_hover_text(
                    "Turn every picture in a folder into a model with the Create tab's settings \
                     (on the fleet when Settings says so)",
                )
                .clicked()
            {
                ctx.send(Command::PickBatchFolder);
            }
        });
    });
    if let Some((name, finished, total)) = &ctx.batch {
        let fraction = *finished as f32 / (*total).max(1) as f32;
        ui.add(
            egui::ProgressBar::new(fraction)
                .text(format!("Batch {name}: {finished} of {total} finished")),
        );
    }
    if !ctx.gallery.loaded {
        ui.spinner();
        return;
    }
    if ctx.gallery.items.is_empty() {
        hint_ui(
            ui,
            "Nothing here yet. Drop an image on the window to make your first model.",
        );
        return;
    }
    egui::ScrollArea::vertical()
        .id_salt("gallery-scroll")
        .auto_shrink([false, false])
        .show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                ui.spacing_mut().item_spacing = Vec2::splat(space::LG);
                for item in &ctx.gallery.items {
                    card_ui(ctx, ui, item);
                }
            });
        });

    if let Some(record) = ctx.gallery.confirm_delete {
        confirm_delete_ui(ctx, ui, record);
    }
}

fn card_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui, item: &GalleryItem) {
    let p = theme::palette(ui.ctx());
    theme::card(ui.ctx()).show(ui, |ui| {
        ui.set_width(CARD_WIDTH);
        ui.vertical(|ui| {
            ui.allocate_ui(Vec2::new(CARD_WIDTH, THUMB_SIDE), |ui| {
                // Text→image entries show their image; image→3D entries a render of
                // their mesh, or their input where the mesh cannot be rendered.
                let mesh_thumb = item.mesh_output().map(|m| (m, ctx.thumbs.get(m)));
                let shown = match &mesh_thumb {
                    Some((m, Thumb::Ready(_) | Thumb::Loading)) => Some(*m),
                    _ => item.image_output().or(item.input.as_deref()),
                };
                ui.centered_and_justified(|ui| match shown {
                    Some(path) => match ctx.thumbs.get(path) {
                        Thumb::Ready(tex) => {
                            ui.add(
                                egui::Image::new(&tex)
                                    .max_size(Vec2::splat(THUMB_SIDE))
                                    .maintain_aspect_ratio(true)
                                    .alt_text(format!("Thumbnail of {}", item.label)),
                            );
                        }
                        Thumb::Loading => {
                            ui.spinner();
                        }
                        Thumb::Failed(_) => {
                            ui.label(RichText::new("no preview").color(p.text_muted));
                        }
                    },
                    None => {
                        ui.label(RichText::new("no preview").color(p.text_muted));
                    }
                });
            });
            ui.horizontal(|ui| {
                phase_badge_ui(ui, item.phase);
                ui.add(egui::Label::new(RichText::new(&item.label).strong()).truncate());
            });
            let mut facts = Vec::new();
            if let Some(t) = &item.text {
                let r = &t.request;
                facts.push(
                    r.model_path
                        .as_deref()
                        .and_then(|d| d.file_name())
                        .map_or_else(|| r.model.clone(), |n| n.to_string_lossy().into_owned()),
                );
                if let (Some(w), Some(h)) = (r.width, r.height) {
                    facts.push(format!("{w}x{h}"));
                }
                facts.push(format!("seed {}", r.seed));
            }
            if let Some(f) = item.format {
                facts.push(f.label().to_owned());
            }
            if let Some(q) = item.quality_preset {
                facts.push(q.label().to_owned());
            }
            if let Some(s) = item.quality_score {
                facts.push(format!("score {s:.2}"));
            }
            if let Some(d) = item.duration_secs {
                facts.push(format!("{d:.1} s"));
            }
            facts.push(relative_time(item.created_at_ms));
            ui.label(RichText::new(facts.join(" · ")).small().color(p.text_muted));
            if let Some(err) = &item.error {
                ui.add(egui::Label::new(RichText::new(err).small().color(p.danger)).wrap());
            }
            ui.add_space(space::XS);
            let can_rerun = item.input.is_some() || item.text.is_some();
            ui.horizontal(|ui| {
                ui.spacing_mut().item_spacing.x = space::XS;
                if can_rerun && ui.button("Re-run").clicked() {
                    ctx.send(Command::Rerun {
                        record: item.record,
                    });
                }
                if item.phase == JobPhase::Succeeded
                    && let Some(image) = item.image_output()
                {
                    crate::ui::text_to_image::generated_image_actions_ui(ctx, ui, image);
                }
                if item.phase == JobPhase::Succeeded && item.params.is_some() {
                    ui.menu_button("Export as…", |ui| {
                        for format in FormatChoice::ALL {
                            if Some(format) != item.format && ui.button(format.label()).clicked() {
                                ctx.send(Command::ExportAs {
                                    record: item.record,
                                    format,
                                });
                            }
                        }
                    });
                }
                // Right-aligned in the shorter first row, so it never covers a button.
                if item.phase.is_finished() {
                    ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                        if ui.button(RichText::new("Delete").color(p.danger)).clicked() {
                            ctx.send(Command::RequestDelete {
                                record: item.record,
                            });
                        }
                    });
                }
            });
            ui.horizontal(|ui| {
                ui.spacing_mut().item_spacing.x = space::XS;
                if item.phase == JobPhase::Succeeded
                    && let Some(mesh) = item.mesh_output()
                    && ui
                        .button("Open in Viewer")
                        .on_hover_text("Show this model in the 3D viewer")
                        .clicked()
                {
                    ctx.send(Command::OpenInViewer {
                        path: mesh.to_path_buf(),
                        quality_score: item.quality_score,
                    });
                }
                if let Some(dir) = item.outputs.first().and_then(|o| o.parent())
                    && ui.button("Open folder").clicked()
                {
                    ctx.send(Command::OpenFolder(dir.to_path_buf()));
                }
            });
        });
    });
}

fn confirm_delete_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui, record: i64) {
    let label = ctx
        .gallery
        .items
        .iter()
        .find(|i| i.record == record)
        .map(|i| i.label.clone())
        .unwrap_or_else(|| format!("job {record}"));
    let modal = egui::Modal::new(egui::Id::unique("confirm-delete")).show(ui.ctx(), |ui| {
        ui.set_width(360.0);
        section_heading_ui(ui, "Delete this generation?");
        hint_ui(
            ui,
            &format!("“{label}” and its output files will be removed. This cannot be undone."),
        );
        ui.add_space(space::MD);
        ui.horizontal(|ui| {
            let p = theme::palette(ui.ctx());
            if ui
                .add(egui::Button::new(RichText::new("Delete").color(p.on_accent)).fill(p.danger))
                .clicked()
            {
                ctx.send(Command::ConfirmDelete { record });
            }
            if ui.button("Keep").clicked() {
                ctx.send(Command::CancelDelete);
            }
        });
    });
    if modal.should_close() {
        ctx.send(Command::CancelDelete);
    }
}

/// "just now", "5 min ago", "3 h ago", "2 d ago".
fn relative_time(created_at_ms: i64) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(created_at_ms);
    let secs = (now_ms - created_at_ms).max(0) / 1000;
    match secs {
        0..60 => "just now".to_owned(),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86400),
    }
}
