//! Settings tab. Changes apply at once and are saved through eframe storage.

use egui::RichText;

use crate::app::state::{Command, FormatChoice, QualityChoice, Settings, ThemeChoice};
use crate::ui::theme::{self, space};
use crate::ui::{StudioCtx, hint_ui, section_heading_ui};

/// Most jobs at once; image→3D is CPU-bound and the machines we target have few cores.
pub const MAX_CONCURRENCY: usize = 8;

pub fn settings_tab_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    let mut s: Settings = ctx.saved.settings.clone();
    theme::card(ui.ctx()).show(ui, |ui| {
        ui.set_max_width(720.0);
        section_heading_ui(ui, "Settings");
        egui::Grid::new("settings-grid")
            .num_columns(2)
            .spacing([space::XL, space::MD])
            .show(ui, |ui| {
                ui.label("Theme");
                ui.horizontal(|ui| {
                    for t in ThemeChoice::ALL {
                        ui.selectable_value(&mut s.theme, t, t.label());
                    }
                });
                ui.end_row();

                let label = ui.label("Default quality");
                egui::ComboBox::from_id_salt("default-quality")
                    .selected_text(s.default_quality.label())
                    .show_ui(ui, |ui| {
                        for q in QualityChoice::ALL {
                            ui.selectable_value(&mut s.default_quality, q, q.label());
                        }
                    })
                    .response
                    .labelled_by(label.id);
                ui.end_row();

                let label = ui.label("Default format");
                egui::ComboBox::from_id_salt("default-format")
                    .selected_text(s.default_format.label())
                    .show_ui(ui, |ui| {
                        for f in FormatChoice::ALL {
                            ui.selectable_value(&mut s.default_format, f, f.label());
                        }
                    })
                    .response
                    .labelled_by(label.id);
                ui.end_row();

                ui.label("Output folder");
                ui.vertical(|ui| {
                    ui.label(RichText::new(ctx.output_dir.display().to_string()).monospace());
                    ui.horizontal(|ui| {
                        if ui.button("Choose folder…").clicked() {
                            ctx.send(Command::PickOutputFolder);
                        }
                        if s.output_dir.is_some() && ui.button("Use default").clicked() {
                            s.output_dir = None;
                        }
                    });
                });
                ui.end_row();

                let label = ui.label("Jobs at once");
                ui.add(egui::Slider::new(&mut s.concurrency, 1..=MAX_CONCURRENCY))
                    .labelled_by(label.id)
                    .on_hover_text(
                        "How many generations run in parallel. Takes effect at the next start.",
                    );
                ui.end_row();

                ui.label("Data folder");
                ui.label(RichText::new(ctx.data_dir.display().to_string()).monospace());
                ui.end_row();
            });
        ui.add_space(space::SM);
        hint_ui(
            ui,
            "The data folder holds the history database and, unless you choose another \
             folder, the generated files. Set ORFEAS_DATA_DIR to move it.",
        );
    });
    if s != ctx.saved.settings {
        ctx.send(Command::SetSettings(s));
    }
}
