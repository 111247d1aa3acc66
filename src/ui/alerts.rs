//! Alerts tab (the rules, their state and the transition history) and the banner
//! shown on every tab while an alert fires.

use egui::RichText;
use orfeas_core::telemetry::{AlertState, Severity, unix_now_secs};

use crate::app::state::{Command, Tab};
use crate::ui::theme::{self, space};
use crate::ui::{StudioCtx, hint_ui, section_heading_ui};

/// Transitions listed; the engine keeps more.
const HISTORY_ROWS: usize = 200;

fn state_color(ui: &egui::Ui, state: AlertState) -> egui::Color32 {
    let p = theme::palette(ui.ctx());
    match state {
        AlertState::Inactive => p.text_muted,
        AlertState::Pending => p.warning,
        AlertState::Firing => p.danger,
        AlertState::Resolved => p.success,
    }
}

fn severity_color(ui: &egui::Ui, severity: Severity) -> egui::Color32 {
    let p = theme::palette(ui.ctx());
    match severity {
        Severity::Critical => p.danger,
        Severity::Warning => p.warning,
    }
}

/// "12 s ago", "3 min ago"…; "—" before the first evaluation.
fn ago(unix_secs: f64) -> String {
    if unix_secs <= 0.0 {
        return "—".to_owned();
    }
    let d = (unix_now_secs() - unix_secs).max(0.0);
    if d < 60.0 {
        format!("{d:.0} s ago")
    } else if d < 3600.0 {
        format!("{:.0} min ago", (d / 60.0).floor())
    } else if d < 86_400.0 {
        format!("{:.1} h ago", d / 3600.0)
    } else {
        format!("{:.1} d ago", d / 86_400.0)
    }
}

/// A red strip under the top bar while anything fires; "Show alerts" opens the tab.
pub fn firing_banner_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    let Ok(telemetry) = ctx.monitoring.telemetry else {
        return;
    };
    let firing: Vec<&'static str> = telemetry
        .alerts()
        .iter()
        .filter(|a| a.state == AlertState::Firing)
        .map(|a| a.name)
        .collect();
    if firing.is_empty() {
        return;
    }
    let p = theme::palette(ui.ctx());
    egui::Panel::top("alert-banner")
        .frame(
            egui::Frame::new()
                .fill(p.danger)
                .inner_margin(egui::Margin::symmetric(space::XL as i8, space::SM as i8)),
        )
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                let text = format!(
                    "{} alert{} firing: {}",
                    firing.len(),
                    if firing.len() == 1 { "" } else { "s" },
                    firing.join(", ")
                );
                ui.label(RichText::new(text).strong().color(egui::Color32::WHITE));
                if ctx.saved.tab != Tab::Alerts && ui.button("Show alerts").clicked() {
                    ctx.send(Command::SelectTab(Tab::Alerts));
                }
            });
        });
}

pub fn alerts_tab_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    let Some(telemetry) = crate::ui::telemetry_or_card_ui(ctx, ui, "Alerts") else {
        return;
    };
    let alerts = telemetry.alerts();
    let history = telemetry.alert_history();
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            theme::card(ui.ctx()).show(ui, |ui| {
                ui.set_width(ui.available_width());
                section_heading_ui(ui, "Alert rules");
                hint_ui(
                    ui,
                    &format!(
                        "Evaluated every second with the same thresholds and `for` durations as \
                         the Prometheus rules. {}",
                        match ctx.monitoring.alertmanager_in_use {
                            Some(url) => format!("Firing and resolved alerts are sent to {url}."),
                            None => "Not sent to an Alertmanager (set one in Settings).".to_owned(),
                        }
                    ),
                );
                ui.add_space(space::SM);
                egui::Grid::new("alert-rules")
                    .num_columns(6)
                    .striped(true)
                    .spacing([space::XL, space::SM])
                    .show(ui, |ui| {
                        for h in ["Alert", "Severity", "State", "Since", "Value", "Summary"] {
                            ui.label(RichText::new(h).strong());
                        }
                        ui.end_row();
                        for a in &alerts {
                            ui.label(RichText::new(a.name).monospace())
                                .on_hover_text(&a.description);
                            ui.label(
                                RichText::new(a.severity.as_str())
                                    .color(severity_color(ui, a.severity)),
                            );
                            ui.label(
                                RichText::new(a.state.as_str())
                                    .strong()
                                    .color(state_color(ui, a.state)),
                            );
                            ui.label(ago(a.since_unix_secs));
                            ui.label(a.unit.format(a.value));
                            ui.label(a.summary);
                            ui.end_row();
                        }
                    });
            });
            ui.add_space(space::LG);
            theme::card(ui.ctx()).show(ui, |ui| {
                ui.set_width(ui.available_width());
                section_heading_ui(ui, "History");
                if history.is_empty() {
                    hint_ui(ui, "No state changes since the app started.");
                    return;
                }
                egui::Grid::new("alert-history")
                    .num_columns(4)
                    .striped(true)
                    .spacing([space::XL, space::XS])
                    .show(ui, |ui| {
                        for h in ["When", "Alert", "Change", "Value"] {
                            ui.label(RichText::new(h).strong());
                        }
                        ui.end_row();
                        for t in history.iter().take(HISTORY_ROWS) {
                            ui.label(ago(t.at_unix_secs));
                            ui.label(RichText::new(t.name).monospace());
                            ui.horizontal(|ui| {
                                ui.label(
                                    RichText::new(t.from.as_str()).color(state_color(ui, t.from)),
                                );
                                ui.label("->");
                                ui.label(
                                    RichText::new(t.to.as_str())
                                        .strong()
                                        .color(state_color(ui, t.to)),
                                );
                            });
                            ui.label(t.unit.format(t.value));
                            ui.end_row();
                        }
                    });
            });
        });
}
