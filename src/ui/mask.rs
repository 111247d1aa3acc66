//! The Create tab's mask: the picture with what will be cut away tinted over
//! it, a brush to add or erase, "keep largest object", undo, reset and the
//! cut-out's export. Paint strokes go out as [`MaskCommand`]s in picture
//! pixels; the editor applies them.

use egui::{RichText, Sense, Vec2};

use crate::app::mask::{Brush, MaskCommand, MaskEditor};
use crate::app::state::Command;
use crate::ui::StudioCtx;
use crate::ui::theme::{self, space};

/// Height the tool rows take above the picture.
pub const TOOLBAR_HEIGHT: f32 = 84.0;

/// Accessible name of the paintable picture (tests find it by this).
pub const CANVAS_LABEL: &str = "Mask overlay";

fn send(ctx: &StudioCtx<'_>, command: MaskCommand) {
    ctx.send(Command::Mask(command));
}

/// The tools: show, add/erase, brush size, keep largest, undo, reset, save.
pub fn mask_toolbar_ui(ctx: &StudioCtx<'_>, ui: &mut egui::Ui, mask: &MaskEditor) {
    let p = theme::palette(ui.ctx());
    let ready = mask.texture().is_some();
    ui.horizontal(|ui| {
        let mut show = mask.show;
        if ui
            .checkbox(&mut show, "Show mask")
            .on_hover_text("Tint what will be cut away before meshing.")
            .changed()
        {
            send(ctx, MaskCommand::SetShow(show));
        }
        ui.add_enabled_ui(ready && mask.show, |ui| {
            for (brush, text, hover) in [
                (Brush::Add, "Add", "Paint the object back in."),
                (Brush::Erase, "Erase", "Paint background away."),
            ] {
                if ui
                    .selectable_label(mask.brush == brush, text)
                    .on_hover_text(hover)
                    .clicked()
                {
                    send(ctx, MaskCommand::SetBrush(brush));
                }
            }
            let mut size = mask.brush_px;
            let label = ui.label("Brush");
            ui.spacing_mut().slider_width = 80.0;
            if ui
                .add(
                    egui::Slider::new(&mut size, 2.0..=200.0)
                        .logarithmic(true)
                        .suffix(" px")
                        .fixed_decimals(0),
                )
                .labelled_by(label.id)
                .on_hover_text("Brush diameter in picture pixels.")
                .changed()
            {
                send(ctx, MaskCommand::SetBrushSize(size));
            }
        });
    });
    ui.horizontal(|ui| {
        ui.add_enabled_ui(ready, |ui| {
            let mut largest = mask.keep_largest;
            if ui
                .checkbox(&mut largest, "Keep largest object")
                .on_hover_text("Drop every island of the mask but the biggest one.")
                .changed()
            {
                send(ctx, MaskCommand::SetKeepLargest(largest));
            }
            if ui
                .add_enabled(mask.can_undo(), egui::Button::new("Undo"))
                .on_hover_text("Take back the last stroke.")
                .clicked()
            {
                send(ctx, MaskCommand::Undo);
            }
            if ui
                .add_enabled(
                    mask.is_edited() || mask.keep_largest,
                    egui::Button::new("Reset mask"),
                )
                .on_hover_text("Back to the mask the background setting finds.")
                .clicked()
            {
                send(ctx, MaskCommand::Reset);
            }
            if ui
                .button("Save cut-out…")
                .on_hover_text("Save the picture with the mask as its transparency (PNG).")
                .clicked()
            {
                send(ctx, MaskCommand::SaveCutOut);
            }
        });
    });
    let color = if mask.error().is_some() {
        p.danger
    } else {
        p.text_muted
    };
    ui.add(egui::Label::new(RichText::new(status_text(mask)).small().color(color)).truncate());
}

/// One line on where the mask came from and how much it keeps.
fn status_text(mask: &MaskEditor) -> String {
    if let Some(err) = mask.error() {
        return format!("No mask: {err}");
    }
    if mask.is_loading() && mask.texture().is_none() {
        return "Finding the object…".to_owned();
    }
    let Some(source) = mask.source() else {
        return String::new();
    };
    let mut text = format!("Mask: {}", crate::ui::create::background_label(source));
    if let Some(share) = mask.foreground_share() {
        text.push_str(&format!(" · keeps {:.0}%", share * 100.0));
    }
    if mask.is_edited() {
        text.push_str(" · edited");
    }
    text
}

/// The picture with the mask over it, paintable; `false` when there is no
/// overlay to show yet (the caller shows the plain picture).
pub fn mask_canvas_ui(
    ctx: &StudioCtx<'_>,
    ui: &mut egui::Ui,
    mask: &MaskEditor,
    size: Vec2,
) -> bool {
    let (Some(texture), Some([pw, ph])) = (mask.texture(), mask.picture_size()) else {
        return false;
    };
    if !mask.show {
        return false;
    }
    let (pw, ph) = (pw as f32, ph as f32);
    let scale = (size.x / pw).min(size.y / ph).max(1e-3);
    let shown = Vec2::new(pw * scale, ph * scale);
    let response = ui.add(
        egui::Image::new(texture)
            .fit_to_exact_size(shown)
            .corner_radius(theme::radius::SM)
            .sense(Sense::click_and_drag())
            .alt_text(CANVAS_LABEL),
    );
    let rect = response.rect;
    let to_picture = |pos: egui::Pos2| [(pos.x - rect.min.x) / scale, (pos.y - rect.min.y) / scale];
    if response.drag_started() {
        send(ctx, MaskCommand::BeginStroke);
        let origin = ui.input(|i| i.pointer.press_origin());
        if let (Some(from), Some(to)) = (origin, response.interact_pointer_pos()) {
            send(
                ctx,
                MaskCommand::Paint {
                    from: to_picture(from),
                    to: to_picture(to),
                },
            );
        }
    } else if response.dragged()
        && let Some(to) = response.interact_pointer_pos()
    {
        let from = to - response.drag_delta();
        send(
            ctx,
            MaskCommand::Paint {
                from: to_picture(from),
                to: to_picture(to),
            },
        );
    } else if response.clicked()
        && let Some(at) = response.interact_pointer_pos()
    {
        send(ctx, MaskCommand::BeginStroke);
        let at = to_picture(at);
        send(ctx, MaskCommand::Paint { from: at, to: at });
    }
    if let Some(hover) = response.hover_pos() {
        // The brush outline, in the colour of what it paints.
        let p = theme::palette(ui.ctx());
        let color = match mask.brush {
            Brush::Add => p.success,
            Brush::Erase => p.danger,
        };
        ui.painter().circle_stroke(
            hover,
            (mask.brush_px * 0.5 * scale).max(2.0),
            egui::Stroke::new(1.5, color),
        );
    }
    ui.add_space(space::XS);
    true
}
