//! Toasts: short messages stacked in the bottom-right corner. Errors stay until dismissed
//! or [`ERROR_TTL_SECS`] pass, so a user who looked away still sees what went wrong.

use egui::{Align2, Color32, CornerRadius, Margin, RichText, Stroke, Vec2};

use crate::ui::theme::{self, radius, space};

const INFO_TTL_SECS: f64 = 5.0;
const ERROR_TTL_SECS: f64 = 30.0;
const MAX_VISIBLE: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToastKind {
    Info,
    Success,
    Error,
}

#[derive(Clone, Debug)]
pub struct Toast {
    pub id: u64,
    pub kind: ToastKind,
    pub text: String,
    /// `ctx.input(|i| i.time)` when it was pushed; `None` until first shown.
    shown_at: Option<f64>,
}

#[derive(Debug, Default)]
pub struct Toasts {
    items: Vec<Toast>,
    next_id: u64,
}

impl Toasts {
    pub fn push(&mut self, kind: ToastKind, text: impl Into<String>) {
        self.next_id += 1;
        self.items.push(Toast {
            id: self.next_id,
            kind,
            text: text.into(),
            shown_at: None,
        });
        if self.items.len() > MAX_VISIBLE {
            self.items.remove(0);
        }
    }

    pub fn error(&mut self, text: impl Into<String>) {
        self.push(ToastKind::Error, text);
    }

    pub fn info(&mut self, text: impl Into<String>) {
        self.push(ToastKind::Info, text);
    }

    pub fn success(&mut self, text: impl Into<String>) {
        self.push(ToastKind::Success, text);
    }

    pub fn dismiss(&mut self, id: u64) {
        self.items.retain(|t| t.id != id);
    }

    pub fn items(&self) -> &[Toast] {
        &self.items
    }

    /// Drops expired toasts and schedules a repaint for the next expiry.
    pub fn expire(&mut self, ctx: &egui::Context) {
        let now = ctx.input(|i| i.time);
        let mut next_expiry: Option<f64> = None;
        self.items.retain_mut(|t| {
            let shown = *t.shown_at.get_or_insert(now);
            let ttl = match t.kind {
                ToastKind::Error => ERROR_TTL_SECS,
                ToastKind::Info | ToastKind::Success => INFO_TTL_SECS,
            };
            let left = shown + ttl - now;
            if left > 0.0 {
                next_expiry = Some(next_expiry.map_or(left, |n| n.min(left)));
            }
            left > 0.0
        });
        if let Some(secs) = next_expiry {
            ctx.request_repaint_after_secs(secs as f32);
        }
    }
}

/// Draws the toasts; returns the id of one whose close button was clicked.
pub fn toasts_ui(ctx: &egui::Context, toasts: &Toasts) -> Option<u64> {
    let p = theme::palette(ctx);
    let mut dismissed = None;
    egui::Area::new(egui::Id::unique("orfeas-toasts"))
        .order(egui::Order::Foreground)
        .anchor(Align2::RIGHT_BOTTOM, Vec2::new(-space::LG, -space::LG))
        .interactable(true)
        .show(ctx, |ui| {
            ui.set_max_width(420.0);
            for toast in toasts.items() {
                let (accent, title) = match toast.kind {
                    ToastKind::Error => (p.danger, "Error"),
                    ToastKind::Success => (p.success, "Done"),
                    ToastKind::Info => (p.accent, "Info"),
                };
                egui::Frame::new()
                    .fill(p.surface)
                    .stroke(Stroke::new(1.0, accent))
                    .corner_radius(CornerRadius::same(radius::MD))
                    .inner_margin(Margin::same(space::MD as i8))
                    .shadow(egui::Shadow {
                        offset: [0, 4],
                        blur: 12,
                        spread: 0,
                        color: Color32::from_black_alpha(60),
                    })
                    .show(ui, |ui| {
                        ui.horizontal(|ui| {
                            ui.label(RichText::new(title).color(accent).strong());
                            ui.with_layout(
                                egui::Layout::right_to_left(egui::Align::Center),
                                |ui| {
                                    if ui.small_button("×").on_hover_text("Dismiss").clicked() {
                                        dismissed = Some(toast.id);
                                    }
                                },
                            );
                        });
                        ui.add(egui::Label::new(RichText::new(&toast.text).color(p.text)).wrap());
                    });
                ui.add_space(space::SM);
            }
        });
    dismissed
}
