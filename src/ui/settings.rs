//! Settings tab. Changes apply at once and are saved through eframe storage.

use egui::RichText;

use crate::app::state::{
    Command, FormatChoice, QualityChoice, RunOn, Settings, ThemeChoice, new_api_token,
};
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

                run_on_ui(ctx, ui, &mut s);
                ui.end_row();
            });
        ui.add_space(space::SM);
        hint_ui(
            ui,
            "The data folder holds the history database and, unless you choose another \
             folder, the generated files. Set ORFEAS_DATA_DIR to move it.",
        );
    });
    ui.add_space(space::LG);
    monitoring_card_ui(ctx, ui, &mut s);
    ui.add_space(space::LG);
    about_card_ui(ui);
    if s != ctx.saved.settings {
        ctx.send(Command::SetSettings(s));
    }
}

/// "Run jobs on: this machine | fleet", the fleet's URL and what is in use.
fn run_on_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui, s: &mut Settings) {
    ui.label("Run jobs on");
    ui.vertical(|ui| {
        ui.horizontal(|ui| {
            for r in RunOn::ALL {
                ui.selectable_value(&mut s.run_on, r, r.label());
            }
        });
        if s.run_on == RunOn::Fleet {
            ui.horizontal(|ui| {
                let label = ui.label("NATS URL");
                ui.add(
                    egui::TextEdit::singleline(&mut s.fleet_url)
                        .hint_text("nats://10.0.0.5:4222")
                        .desired_width(320.0),
                )
                .labelled_by(label.id);
            });
        }
        let saved = &ctx.saved.settings;
        let changed = s.run_on != saved.run_on
            || (s.run_on == RunOn::Fleet && s.fleet_url.trim() != saved.fleet_url.trim());
        match (&ctx.monitoring.fleet_in_use, changed) {
            (_, true) => hint_ui(ui, "Saved; applied at the next start of the app."),
            (Ok(Some(urls)), false) => hint_ui(
                ui,
                &format!("Jobs go to the fleet at {urls} (workers: `orfeas serve --queue`)."),
            ),
            (Ok(None), false) => hint_ui(ui, "Jobs run on this computer."),
            (Err(err), false) => {
                let p = theme::palette(ui.ctx());
                ui.add(egui::Label::new(RichText::new(*err).color(p.danger)).wrap());
            }
        }
    });
}

/// Version, commit, compiled-in GPU features and model licences: the same as
/// `orfeas --version`.
fn about_card_ui(ui: &mut egui::Ui) {
    use crate::about;
    theme::card(ui.ctx()).show(ui, |ui| {
        ui.set_max_width(720.0);
        section_heading_ui(ui, "About ORFEAS Studio");
        egui::Grid::new("about-grid")
            .num_columns(2)
            .spacing([space::XL, space::SM])
            .show(ui, |ui| {
                ui.label("Version");
                ui.label(RichText::new(about::VERSION).monospace());
                ui.end_row();
                ui.label("Commit");
                ui.label(RichText::new(about::COMMIT).monospace());
                ui.end_row();
                ui.label("GPU features");
                ui.label(about::features_line());
                ui.end_row();
                ui.label("Licence");
                ui.label(env!("CARGO_PKG_LICENSE"));
                ui.end_row();
            });
        ui.add_space(space::SM);
        ui.label(RichText::new("Model licences").strong());
        hint_ui(
            ui,
            "Weights are downloaded separately, never bundled; each model's licence applies.",
        );
        egui::Grid::new("about-models")
            .num_columns(2)
            .spacing([space::XL, space::XS])
            .show(ui, |ui| {
                for (name, licence) in about::model_licences() {
                    ui.label(RichText::new(name).monospace());
                    ui.add(egui::Label::new(licence).wrap());
                    ui.end_row();
                }
            });
    });
}

/// Metrics endpoint, local API token and Alertmanager URL.
fn monitoring_card_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui, s: &mut Settings) {
    let m = ctx.monitoring;
    theme::card(ui.ctx()).show(ui, |ui| {
        ui.set_max_width(720.0);
        section_heading_ui(ui, "Monitoring and local API");
        egui::Grid::new("monitoring-grid")
            .num_columns(2)
            .spacing([space::XL, space::MD])
            .show(ui, |ui| {
                ui.label("HTTP");
                ui.vertical(|ui| {
                    ui.checkbox(&mut s.metrics_endpoint, "Metrics endpoint")
                        .on_hover_text("Serve /metrics, /health and the HTTP API on this computer");
                    match (m.endpoint_addr, m.endpoint_error) {
                        (Some(addr), _) => {
                            ui.label(
                                RichText::new(format!("serving on http://{addr}")).monospace(),
                            );
                        }
                        (None, Some(err)) => {
                            let p = theme::palette(ui.ctx());
                            ui.label(RichText::new(err).color(p.danger));
                        }
                        (None, None) => hint_ui(ui, "off"),
                    }
                });
                ui.end_row();

                let label = ui.label("Port");
                ui.add(egui::DragValue::new(&mut s.metrics_port).range(1024..=65535))
                    .labelled_by(label.id)
                    .on_hover_text("Listens on 127.0.0.1 only; changing it restarts the endpoint");
                ui.end_row();

                ui.label("Local API token");
                ui.vertical(|ui| {
                    ui.horizontal(|ui| {
                        ui.label(RichText::new(&s.api_token).monospace());
                        if ui.button("Copy").clicked() {
                            ui.ctx().copy_text(s.api_token.clone());
                        }
                        if ui.button("New token").clicked() {
                            s.api_token = new_api_token();
                        }
                    });
                    hint_ui(
                        ui,
                        "/api/* asks for it as a bearer token; /metrics and /health do not.",
                    );
                });
                ui.end_row();

                ui.label("Example");
                let curl = format!(
                    "curl -H \"Authorization: Bearer {}\" http://127.0.0.1:{}/api/jobs",
                    s.api_token, s.metrics_port
                );
                ui.horizontal(|ui| {
                    ui.label(RichText::new(&curl).monospace().small());
                    if ui.button("Copy").clicked() {
                        ui.ctx().copy_text(curl.clone());
                    }
                });
                ui.end_row();

                let label = ui.label("Alertmanager URL");
                ui.vertical(|ui| {
                    ui.add(
                        egui::TextEdit::singleline(&mut s.alertmanager_url)
                            .hint_text("http://127.0.0.1:9093")
                            .desired_width(320.0),
                    )
                    .labelled_by(label.id);
                    let in_use = m.alertmanager_in_use.unwrap_or("");
                    let note = if s.alertmanager_url.trim() == in_use {
                        match m.alertmanager_in_use {
                            Some(url) => format!("Firing and resolved alerts are sent to {url}."),
                            None => "Alerts stay in the app.".to_owned(),
                        }
                    } else {
                        "Saved; applied at the next start of the app.".to_owned()
                    };
                    hint_ui(ui, &note);
                });
                ui.end_row();
            });
    });
}
