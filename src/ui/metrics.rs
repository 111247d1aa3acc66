//! Metrics tab: the dashboard rows of DESIGN.md, drawn from the same panel list that
//! generates the Grafana dashboard (`telemetry.panels()`), so the two cannot drift.

use egui::RichText;
use egui_plot::{Legend, Line, Plot};
use orfeas_core::telemetry::{Panel, PanelKind, Row, Telemetry, TimeRange, Unit};

use crate::ui::theme::{self, space};
use crate::ui::{StudioCtx, hint_ui, section_heading_ui};

const PANEL_MIN_WIDTH: f32 = 300.0;
const CHART_HEIGHT: f32 = 130.0;
const NO_DATA: &str = "no data yet";

pub fn metrics_tab_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    let Some(telemetry) = crate::ui::telemetry_or_card_ui(ctx, ui, "Metrics") else {
        return;
    };
    let range_id = ui.make_persistent_id("metrics-range");
    let mut range_index: usize = ui.data(|d| d.get_temp(range_id)).unwrap_or(0);
    ui.horizontal(|ui| {
        ui.label(RichText::new("Metrics").heading());
        ui.add_space(space::XL);
        ui.label("Range");
        for (i, r) in TimeRange::ALL.iter().enumerate() {
            ui.selectable_value(&mut range_index, i, r.label());
        }
    });
    ui.data_mut(|d| d.insert_temp(range_id, range_index));
    let range = TimeRange::ALL
        .get(range_index)
        .copied()
        .unwrap_or(TimeRange::M5);
    if let Some(note) = telemetry.gpu_note() {
        hint_ui(ui, &note);
    }
    ui.add_space(space::SM);

    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .show(ui, |ui| {
            for row in Row::ALL {
                let panels: Vec<&Panel> =
                    telemetry.panels().iter().filter(|p| p.row == row).collect();
                if panels.is_empty() {
                    continue;
                }
                section_heading_ui(ui, row.title());
                let avail = ui.available_width();
                let columns = ((avail / PANEL_MIN_WIDTH).floor() as usize).clamp(1, 4);
                let gap = space::MD;
                let width = (avail - gap * (columns as f32 - 1.0)) / columns as f32;
                for chunk in panels.chunks(columns) {
                    ui.horizontal_top(|ui| {
                        ui.spacing_mut().item_spacing.x = gap;
                        for panel in chunk {
                            panel_ui(ui, telemetry, panel, range, width);
                        }
                    });
                    ui.add_space(gap);
                }
                ui.add_space(space::SM);
            }
        });
}

fn panel_ui(ui: &mut egui::Ui, t: &Telemetry, panel: &Panel, range: TimeRange, width: f32) {
    let frame = theme::card(ui.ctx());
    // The frame's margins and stroke come on top of the content width.
    let inner = (width - frame.total_margin().sum().x).max(120.0);
    frame.show(ui, |ui| {
        ui.set_width(inner);
        ui.set_min_height(CHART_HEIGHT + 28.0);
        ui.vertical(|ui| {
            ui.label(RichText::new(panel.title).strong())
                .on_hover_text(panel.description);
            match panel.kind {
                PanelKind::Stat => stat_ui(ui, t, panel, range),
                PanelKind::TimeSeries => chart_ui(ui, t, panel, range),
                PanelKind::Pie | PanelKind::Bars | PanelKind::Heatmap => shares_ui(ui, t, panel),
            }
        });
    });
}

fn no_data_ui(ui: &mut egui::Ui) {
    let p = theme::palette(ui.ctx());
    ui.label(RichText::new(NO_DATA).color(p.text_muted));
}

/// Points with a value (NaN marks "no data" in the store).
fn points(t: &Telemetry, id: &str, range: TimeRange) -> Vec<[f64; 2]> {
    t.series(id, range)
        .into_iter()
        .filter(|[_, v]| v.is_finite())
        .collect()
}

fn stat_ui(ui: &mut egui::Ui, t: &Telemetry, panel: &Panel, range: TimeRange) {
    let Some(first) = panel.series.first() else {
        return no_data_ui(ui);
    };
    match t.latest(&first.id).filter(|v| v.is_finite()) {
        Some(v) => {
            let p = theme::palette(ui.ctx());
            ui.label(
                RichText::new(format_value(v, panel.unit))
                    .size(30.0)
                    .strong()
                    .color(p.accent),
            );
            let pts = points(t, &first.id, range);
            if pts.len() > 1 {
                plot(
                    ui,
                    panel,
                    range,
                    CHART_HEIGHT - 50.0,
                    false,
                    |plot_ui, now| {
                        plot_ui.line(Line::new(first.label.clone(), shift(&pts, now, range)));
                    },
                );
            }
        }
        None => no_data_ui(ui),
    }
}

fn chart_ui(ui: &mut egui::Ui, t: &Telemetry, panel: &Panel, range: TimeRange) {
    let lines: Vec<(String, Vec<[f64; 2]>)> = panel
        .series
        .iter()
        .map(|s| (s.label.clone(), points(t, &s.id, range)))
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    if lines.is_empty() {
        return no_data_ui(ui);
    }
    plot(
        ui,
        panel,
        range,
        CHART_HEIGHT,
        // Beyond three entries the legend covers the plot in a dashboard card;
        // hovering a line still names its series.
        (2..=3).contains(&lines.len()),
        |plot_ui, now| {
            for (label, pts) in &lines {
                plot_ui.line(Line::new(label.clone(), shift(pts, now, range)));
            }
        },
    );
}

/// Pie, bar and heatmap panels: the newest value of each series as a share bar.
fn shares_ui(ui: &mut egui::Ui, t: &Telemetry, panel: &Panel) {
    let values: Vec<(&str, f64)> = panel
        .series
        .iter()
        .filter_map(|s| {
            t.latest(&s.id)
                .filter(|v| v.is_finite())
                .map(|v| (s.label.as_str(), v))
        })
        .collect();
    let total: f64 = values.iter().map(|(_, v)| v.max(0.0)).sum();
    let max = values.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    if values.is_empty() || max <= 0.0 {
        return no_data_ui(ui);
    }
    egui::ScrollArea::vertical()
        .id_salt(panel.id)
        .max_height(CHART_HEIGHT)
        .show(ui, |ui| {
            for (label, v) in values {
                let share = if panel.kind == PanelKind::Pie {
                    v.max(0.0) / total.max(f64::MIN_POSITIVE)
                } else {
                    v.max(0.0) / max
                };
                let text = if panel.kind == PanelKind::Pie {
                    format!(
                        "{label}: {} ({:.0} %)",
                        format_value(v, panel.unit),
                        share * 100.0
                    )
                } else {
                    format!("{label}: {}", format_value(v, panel.unit))
                };
                ui.add(egui::ProgressBar::new(share as f32).text(text));
            }
        });
}

/// Seconds per x-axis unit and its name for a range.
fn x_scale(range: TimeRange) -> (f64, &'static str) {
    match range {
        TimeRange::M5 | TimeRange::H1 => (60.0, "minutes ago"),
        TimeRange::H24 => (3600.0, "hours ago"),
        TimeRange::D7 | TimeRange::D30 => (86_400.0, "days ago"),
    }
}

/// Unix seconds → time relative to now in the range's unit (negative = past).
fn shift(pts: &[[f64; 2]], now: f64, range: TimeRange) -> Vec<[f64; 2]> {
    let (unit, _) = x_scale(range);
    pts.iter().map(|[x, y]| [(x - now) / unit, *y]).collect()
}

fn plot(
    ui: &mut egui::Ui,
    panel: &Panel,
    range: TimeRange,
    height: f32,
    legend: bool,
    add: impl FnOnce(&mut egui_plot::PlotUi<'_>, f64),
) {
    let now = orfeas_core::telemetry::unix_now_secs();
    let (unit_secs, unit_name) = x_scale(range);
    let value_unit = panel.unit;
    let mut plot = Plot::new(("metrics-plot", panel.id))
        .height(height)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .allow_boxed_zoom(false)
        .allow_double_click_reset(false)
        .include_x(-range.secs() / unit_secs)
        .include_x(0.0)
        .include_y(0.0)
        .x_axis_formatter(move |mark, _| {
            // `+ 0.0` turns -0 into 0; the right edge reads "now".
            let ago = (-mark.value).round() + 0.0;
            if ago == 0.0 {
                "now".to_owned()
            } else {
                format!("{ago:.0}")
            }
        })
        .y_axis_formatter(move |mark, _| format_value(mark.value, value_unit))
        .y_axis_min_width(48.0)
        .x_axis_label(unit_name);
    if legend {
        plot = plot.legend(Legend::default());
    }
    plot.show(ui, |plot_ui| add(plot_ui, now));
}

/// A value with its unit, short enough for a stat or an axis label.
pub fn format_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Percent => format!("{v:.1} %"),
        Unit::Ratio => format!("{:.0} %", v * 100.0),
        Unit::PerSecond => {
            if v == 0.0 || v.abs() >= 10.0 {
                format!("{v:.0}/s")
            } else {
                format!("{v:.2}/s")
            }
        }
        Unit::Seconds => format_secs(v),
        Unit::Bytes => format_bytes(v),
        Unit::Count => {
            if (v - v.round()).abs() < 1e-9 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        }
    }
}

fn format_secs(v: f64) -> String {
    if v.abs() < 1.0 && v != 0.0 {
        format!("{:.0} ms", v * 1000.0)
    } else if v.abs() < 60.0 {
        format!("{v:.1} s")
    } else if v.abs() < 3600.0 {
        format!("{:.0}m {:.0}s", (v / 60.0).trunc(), v % 60.0)
    } else if v.abs() < 86_400.0 {
        format!("{:.0}h {:.0}m", (v / 3600.0).trunc(), (v % 3600.0) / 60.0)
    } else {
        format!("{:.1} d", v / 86_400.0)
    }
}

pub fn format_bytes(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = v;
    let mut i = 0;
    while x.abs() >= 1024.0 && i + 1 < UNITS.len() {
        x /= 1024.0;
        i += 1;
    }
    let unit = UNITS.get(i).copied().unwrap_or("B");
    if i == 0 {
        format!("{x:.0} {unit}")
    } else {
        format!("{x:.1} {unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_the_way_people_write_them() {
        assert_eq!(format_value(0.25, Unit::Seconds), "250 ms");
        assert_eq!(format_value(125.0, Unit::Seconds), "2m 5s");
        assert_eq!(format_value(1536.0, Unit::Bytes), "1.5 KiB");
        assert_eq!(format_value(0.5, Unit::Ratio), "50 %");
        assert_eq!(format_value(3.0, Unit::Count), "3");
    }
}
