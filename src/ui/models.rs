//! Models tab: every model ORFEAS knows, whether and where it is installed, its
//! size and licence, with download (progress, cancel, resume), delete and open folder.

use egui::RichText;

use crate::app::model_library::{DownloadView, ModelInstall, ModelRow, ModelsView};
use crate::app::state::Command;
use crate::ui::metrics::format_bytes;
use crate::ui::theme::{self, space};
use crate::ui::{StudioCtx, hint_ui, section_heading_ui};

pub fn models_tab_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    let Some(view) = ctx.models else {
        hint_ui(ui, "The model list is not available in this window.");
        return;
    };
    egui::ScrollArea::vertical()
        .id_salt("models-scroll")
        .auto_shrink([false, false])
        .show(ui, |ui| {
            theme::card(ui.ctx()).show(ui, |ui| {
                ui.set_width(ui.available_width());
                ui.horizontal(|ui| {
                    section_heading_ui(ui, "Models");
                    ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                        if ui.button("Refresh").clicked() {
                            ctx.send(Command::RefreshModels);
                        }
                        if ui.button("Open models folder").clicked() {
                            ctx.send(Command::OpenFolder(view.download_root.clone()));
                        }
                    });
                });
                hint_ui(
                    ui,
                    &format!(
                        "Weights are never downloaded without you asking. ORFEAS looks in \
                         $ORFEAS_MODELS, in {} and in the Hugging Face cache, so models \
                         other tools downloaded are found too. The built-in image-to-3D \
                         method needs no weights.",
                        view.download_root.display()
                    ),
                );
                ui.add_space(space::MD);
                if !view.loaded {
                    ui.horizontal(|ui| {
                        ui.spinner();
                        ui.label("Looking for installed models…");
                    });
                    return;
                }
                for row in &view.rows {
                    model_row_ui(ctx, ui, view, row);
                    ui.separator();
                }
            });
        });
}

fn model_row_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui, view: &ModelsView, row: &ModelRow) {
    let p = theme::palette(ui.ctx());
    ui.add_space(space::XS);
    ui.horizontal(|ui| {
        ui.label(RichText::new(row.name).strong().size(16.0));
        ui.label(RichText::new(row.repo_id).monospace().color(p.text_muted));
        let (state, color) = match &row.install {
            ModelInstall::Installed { .. } => ("installed", p.success),
            ModelInstall::Incomplete { .. } => ("incomplete", p.warning),
            ModelInstall::Missing => ("not installed", p.text_muted),
        };
        ui.label(RichText::new(state).color(color).strong());
    });
    match &row.install {
        ModelInstall::Installed { dir, bytes, source } => {
            ui.label(format!(
                "{} on disk · {} · {}",
                format_bytes(*bytes as f64),
                source.label(),
                dir.display()
            ));
        }
        ModelInstall::Incomplete { dir, missing } => {
            ui.label(
                RichText::new(format!(
                    "{} of its files are missing in {} (Download resumes where it stopped): {}",
                    missing.len(),
                    dir.display(),
                    missing.join(", ")
                ))
                .color(p.warning),
            );
        }
        ModelInstall::Missing => {
            ui.label(format!(
                "About {} to download",
                format_bytes(row.download_bytes as f64)
            ));
        }
    }
    let licence_color = if row.non_commercial {
        p.warning
    } else {
        p.text_muted
    };
    ui.add(
        egui::Label::new(RichText::new(format!("Licence: {}", row.licence)).color(licence_color))
            .wrap(),
    );
    ui.add_space(space::XS);
    if let Some(d) = view.downloads.get(row.name) {
        download_progress_ui(ctx, ui, row.name, d);
        return;
    }
    if view.confirm_delete.as_deref() == Some(row.name) {
        ui.horizontal(|ui| {
            ui.label(RichText::new(format!("Delete {} from disk?", row.name)).color(p.danger));
            if ui.button(RichText::new("Delete").color(p.danger)).clicked() {
                ctx.send(Command::ConfirmDeleteModel(row.name.to_owned()));
            }
            if ui.button("Keep").clicked() {
                ctx.send(Command::CancelDeleteModel);
            }
        });
        return;
    }
    ui.horizontal(|ui| {
        let download_text = match row.install {
            ModelInstall::Installed { .. } => None,
            ModelInstall::Incomplete { .. } => Some("Resume download"),
            ModelInstall::Missing => Some("Download"),
        };
        if let Some(text) = download_text
            && ui
                .button(text)
                .on_hover_text(format!(
                    "Fetch {} from {} into {}",
                    row.name,
                    row.repo_id,
                    view.download_root.display()
                ))
                .clicked()
        {
            ctx.send(Command::DownloadModel(row.name.to_owned()));
        }
        if let ModelInstall::Installed { dir, .. } | ModelInstall::Incomplete { dir, .. } =
            &row.install
        {
            if ui.button("Open folder").clicked() {
                ctx.send(Command::OpenFolder(dir.clone()));
            }
            if ui.button(RichText::new("Delete").color(p.danger)).clicked() {
                ctx.send(Command::RequestDeleteModel(row.name.to_owned()));
            }
        }
    });
}

fn download_progress_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui, name: &str, d: &DownloadView) {
    ui.horizontal(|ui| {
        let fraction = d
            .total_bytes
            .filter(|t| *t > 0)
            .map_or(0.0, |t| d.done_bytes as f32 / t as f32);
        let text = if d.file.is_empty() {
            "starting…".to_owned()
        } else {
            format!(
                "file {}/{} {}: {}{}",
                d.file_index + 1,
                d.file_count,
                d.file,
                format_bytes(d.done_bytes as f64),
                d.total_bytes
                    .map(|t| format!(" of {}", format_bytes(t as f64)))
                    .unwrap_or_default()
            )
        };
        ui.add(
            egui::ProgressBar::new(fraction)
                .text(text)
                .desired_width((ui.available_width() - 90.0).max(120.0)),
        );
        if ui.button("Cancel").clicked() {
            ctx.send(Command::CancelDownload(name.to_owned()));
        }
    });
}
