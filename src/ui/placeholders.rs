//! Tabs whose content arrives with later work. They say plainly what will be there and
//! show no made-up data.

use crate::ui::theme::{self, space};
use crate::ui::{StudioCtx, hint_ui, section_heading_ui};

fn coming_ui(ui: &mut egui::Ui, title: &str, what: &str, until: &str) {
    theme::card(ui.ctx()).show(ui, |ui| {
        ui.set_max_width(720.0);
        section_heading_ui(ui, title);
        hint_ui(ui, what);
        ui.add_space(space::SM);
        hint_ui(ui, until);
    });
}

pub fn models_tab_ui(_ctx: &StudioCtx<'_>, ui: &mut egui::Ui) {
    coming_ui(
        ui,
        "Models",
        "Stable Diffusion and TripoSR weights: where they were found, their size, download \
         and verify buttons. The built-in image-to-3D method needs no weights and always works.",
        "Not in this build yet: text-to-image and TripoSR arrive with the model work.",
    );
}
