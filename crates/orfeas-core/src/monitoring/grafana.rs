//! Grafana dashboard JSON generated from `telemetry::panels`.

use serde_json::{Value, json};

use crate::telemetry::panels::{Panel, PanelKind, Row, panels};

const DATASOURCE_UID: &str = "prometheus";

fn datasource() -> Value {
    json!({ "type": "prometheus", "uid": DATASOURCE_UID })
}

fn panel_type(kind: PanelKind) -> &'static str {
    match kind {
        PanelKind::Stat => "stat",
        PanelKind::TimeSeries => "timeseries",
        PanelKind::Pie => "piechart",
        PanelKind::Heatmap => "heatmap",
        PanelKind::Bars => "bargauge",
    }
}

fn panel_json(p: &Panel, id: u32, x: u32, y: u32, w: u32, h: u32) -> Value {
    let targets: Vec<Value> = p
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let ref_id = char::from(b'A' + (i as u8 % 26)).to_string();
            let mut v = json!({
                "datasource": datasource(),
                "expr": t.promql,
                "legendFormat": t.legend,
                "refId": ref_id,
                "range": true,
            });
            if let Some(obj) = v.as_object_mut() {
                if t.heatmap {
                    obj.insert("format".into(), "heatmap".into());
                }
                if matches!(p.kind, PanelKind::Pie | PanelKind::Bars) {
                    obj.insert("instant".into(), true.into());
                    obj.insert("range".into(), false.into());
                }
            }
            v
        })
        .collect();
    let options = match p.kind {
        PanelKind::Stat => json!({
            "reduceOptions": { "calcs": ["lastNotNull"], "fields": "", "values": false },
            "graphMode": "area",
            "colorMode": "value",
        }),
        PanelKind::TimeSeries => json!({
            "legend": { "displayMode": "list", "placement": "bottom", "showLegend": true },
            "tooltip": { "mode": "multi", "sort": "none" },
        }),
        PanelKind::Pie => json!({
            "reduceOptions": { "calcs": ["lastNotNull"], "fields": "", "values": false },
            "pieType": "pie",
            "legend": { "displayMode": "list", "placement": "right", "showLegend": true },
        }),
        PanelKind::Heatmap => json!({
            "calculate": false,
            "yAxis": { "axisPlacement": "left", "unit": "short" },
            "cellGap": 1,
            "color": { "mode": "scheme", "scheme": "Oranges", "steps": 64 },
        }),
        PanelKind::Bars => json!({
            "reduceOptions": { "calcs": ["lastNotNull"], "fields": "", "values": false },
            "orientation": "horizontal",
            "displayMode": "gradient",
        }),
    };
    json!({
        "id": id,
        "type": panel_type(p.kind),
        "title": p.title,
        "description": p.description,
        "datasource": datasource(),
        "gridPos": { "x": x, "y": y, "w": w, "h": h },
        "fieldConfig": { "defaults": { "unit": p.unit.grafana_unit() }, "overrides": [] },
        "options": options,
        "targets": targets,
    })
}

fn variable(name: &str, label: &str, query: &str) -> Value {
    json!({
        "name": name,
        "label": label,
        "type": "query",
        "datasource": datasource(),
        "query": { "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery" },
        "refresh": 2,
        "includeAll": true,
        "multi": true,
        "allValue": ".*",
        "current": { "selected": true, "text": ["All"], "value": ["$__all"] },
        "sort": 1,
    })
}

/// The dashboard as a JSON value.
pub fn dashboard() -> Value {
    let all = panels();
    let mut out: Vec<Value> = Vec::new();
    let mut id = 1;
    let mut y = 0;
    for row in Row::ALL {
        out.push(json!({
            "type": "row",
            "id": id,
            "title": row.title(),
            "collapsed": false,
            "panels": [],
            "gridPos": { "x": 0, "y": y, "w": 24, "h": 1 },
        }));
        id += 1;
        y += 1;
        let in_row: Vec<&Panel> = all.iter().filter(|p| p.row == row).collect();
        let (per_line, h) = if in_row.iter().all(|p| p.kind == PanelKind::Stat) {
            (4, 4)
        } else {
            (3, 8)
        };
        let w = 24 / per_line;
        for (i, p) in in_row.iter().enumerate() {
            let x = (i as u32 % per_line) * w;
            let line = i as u32 / per_line;
            out.push(panel_json(p, id, x, y + line * h, w, h));
            id += 1;
        }
        y += (in_row.len() as u32).div_ceil(per_line) * h;
    }
    // The fleet's row: queue, throughput per worker, lag, redeliveries.
    out.push(json!({
        "type": "row",
        "id": id,
        "title": "Fleet",
        "collapsed": false,
        "panels": [],
        "gridPos": { "x": 0, "y": y, "w": 24, "h": 1 },
    }));
    id += 1;
    y += 1;
    for (i, p) in super::fleet::panels().iter().enumerate() {
        let (w, h) = (12, 8);
        out.push(panel_json(
            p,
            id,
            (i as u32 % 2) * w,
            y + (i as u32 / 2) * h,
            w,
            h,
        ));
        id += 1;
    }
    json!({
        "uid": "orfeas-studio",
        "title": "ORFEAS Studio",
        "description": "Generated by `orfeas monitoring export` from the studio's panel definitions (same as the in-app Metrics tab).",
        "tags": ["orfeas"],
        "timezone": "browser",
        "editable": true,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": { "from": "now-1h", "to": "now" },
        "timepicker": { "refresh_intervals": ["5s", "10s", "30s", "1m", "5m"] },
        "templating": { "list": [
            variable("job", "Job", "label_values(app_uptime_seconds, job)"),
            variable("instance", "Studio", "label_values(app_uptime_seconds{job=~\"$job\"}, instance)"),
        ] },
        "annotations": { "list": [] },
        "links": [],
        "panels": out,
    })
}

/// `grafana-dashboard.json` (pretty, final newline).
pub fn dashboard_json() -> String {
    let mut s = serde_json::to_string_pretty(&dashboard()).unwrap_or_default();
    s.push('\n');
    s
}

/// `(panel title, PromQL)` of every dashboard query of the studio rows.
pub fn dashboard_targets() -> Vec<(String, String)> {
    panels()
        .iter()
        .flat_map(|p| {
            p.targets
                .iter()
                .map(|t| (p.title.to_owned(), t.promql.clone()))
        })
        .collect()
}
