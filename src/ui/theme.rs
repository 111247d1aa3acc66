//! Design tokens (spacing, radii, type sizes, colours for both themes) and their one
//! application point, [`apply`], which writes them into egui's `Style` for dark and light.

use egui::{Color32, CornerRadius, FontFamily, FontId, Margin, Stroke, TextStyle, Theme, Vec2};

use crate::app::state::ThemeChoice;

/// Spacing scale in points. Everything in the UI uses these, never ad-hoc numbers.
pub mod space {
    pub const XS: f32 = 4.0;
    pub const SM: f32 = 8.0;
    pub const MD: f32 = 12.0;
    pub const LG: f32 = 16.0;
    pub const XL: f32 = 24.0;
}

/// Corner radii in points.
pub mod radius {
    pub const SM: u8 = 4;
    pub const MD: u8 = 8;
    pub const LG: u8 = 12;
}

/// Colours of one theme.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Palette {
    /// Window background behind panels.
    pub bg: Color32,
    /// Cards, side panels.
    pub surface: Color32,
    /// Inputs, drop zone, hovered rows.
    pub surface_alt: Color32,
    pub border: Color32,
    pub text: Color32,
    pub text_muted: Color32,
    pub accent: Color32,
    /// Text drawn on top of `accent`.
    pub on_accent: Color32,
    pub success: Color32,
    pub warning: Color32,
    pub danger: Color32,
}

pub const DARK: Palette = Palette {
    bg: Color32::from_rgb(0x14, 0x16, 0x1b),
    surface: Color32::from_rgb(0x1c, 0x1f, 0x26),
    surface_alt: Color32::from_rgb(0x26, 0x2a, 0x33),
    border: Color32::from_rgb(0x33, 0x38, 0x44),
    text: Color32::from_rgb(0xe6, 0xe8, 0xee),
    text_muted: Color32::from_rgb(0x9a, 0xa1, 0xb0),
    accent: Color32::from_rgb(0x7c, 0x6c, 0xf2),
    on_accent: Color32::from_rgb(0xff, 0xff, 0xff),
    success: Color32::from_rgb(0x4c, 0xc3, 0x8a),
    warning: Color32::from_rgb(0xf2, 0xb1, 0x4c),
    danger: Color32::from_rgb(0xef, 0x5f, 0x5f),
};

pub const LIGHT: Palette = Palette {
    bg: Color32::from_rgb(0xf4, 0xf5, 0xf8),
    surface: Color32::from_rgb(0xff, 0xff, 0xff),
    surface_alt: Color32::from_rgb(0xea, 0xec, 0xf1),
    border: Color32::from_rgb(0xd5, 0xd9, 0xe1),
    text: Color32::from_rgb(0x1d, 0x20, 0x27),
    text_muted: Color32::from_rgb(0x5c, 0x63, 0x70),
    accent: Color32::from_rgb(0x5b, 0x4b, 0xdb),
    on_accent: Color32::from_rgb(0xff, 0xff, 0xff),
    success: Color32::from_rgb(0x1f, 0x8f, 0x5a),
    warning: Color32::from_rgb(0xb3, 0x6b, 0x00),
    danger: Color32::from_rgb(0xc6, 0x30, 0x30),
};

/// The palette for the theme egui is currently showing.
pub fn palette(ctx: &egui::Context) -> &'static Palette {
    match ctx.theme() {
        Theme::Dark => &DARK,
        Theme::Light => &LIGHT,
    }
}

/// Writes the tokens into both of egui's styles and selects the theme preference.
/// Cheap, but only needs calling when the choice changes.
pub fn apply(ctx: &egui::Context, choice: ThemeChoice) {
    ctx.set_style_of(Theme::Dark, style_for(Theme::Dark));
    ctx.set_style_of(Theme::Light, style_for(Theme::Light));
    ctx.set_theme(match choice {
        ThemeChoice::System => egui::ThemePreference::System,
        ThemeChoice::Dark => egui::ThemePreference::Dark,
        ThemeChoice::Light => egui::ThemePreference::Light,
    });
}

fn style_for(theme: Theme) -> egui::Style {
    let p = match theme {
        Theme::Dark => &DARK,
        Theme::Light => &LIGHT,
    };
    let mut style = egui::Style {
        visuals: match theme {
            Theme::Dark => egui::Visuals::dark(),
            Theme::Light => egui::Visuals::light(),
        },
        ..Default::default()
    };

    style.text_styles = [
        (
            TextStyle::Heading,
            FontId::new(20.0, FontFamily::Proportional),
        ),
        (TextStyle::Body, FontId::new(14.0, FontFamily::Proportional)),
        (
            TextStyle::Button,
            FontId::new(14.0, FontFamily::Proportional),
        ),
        (
            TextStyle::Small,
            FontId::new(11.5, FontFamily::Proportional),
        ),
        (
            TextStyle::Monospace,
            FontId::new(13.0, FontFamily::Monospace),
        ),
    ]
    .into();

    let s = &mut style.spacing;
    s.item_spacing = Vec2::new(space::SM, space::SM);
    s.button_padding = Vec2::new(space::MD, space::XS + 2.0);
    s.window_margin = Margin::same(space::LG as i8);
    s.menu_margin = Margin::same(space::SM as i8);
    s.interact_size.y = 28.0;
    s.slider_width = 180.0;
    s.combo_width = 180.0;

    let v = &mut style.visuals;
    v.panel_fill = p.bg;
    v.window_fill = p.surface;
    v.extreme_bg_color = p.surface_alt;
    v.faint_bg_color = p.surface_alt;
    v.window_stroke = Stroke::new(1.0, p.border);
    v.window_corner_radius = CornerRadius::same(radius::LG);
    v.menu_corner_radius = CornerRadius::same(radius::MD);
    v.hyperlink_color = p.accent;
    v.warn_fg_color = p.warning;
    v.error_fg_color = p.danger;
    v.override_text_color = None;
    v.selection.bg_fill = p.accent;
    v.selection.stroke = Stroke::new(1.0, p.on_accent);
    v.slider_trailing_fill = true;

    let w = &mut v.widgets;
    for (wv, fill) in [
        (&mut w.noninteractive, p.surface),
        (&mut w.inactive, p.surface_alt),
        (&mut w.hovered, p.border),
        (&mut w.active, p.accent),
        (&mut w.open, p.surface_alt),
    ] {
        wv.corner_radius = CornerRadius::same(radius::MD);
        wv.bg_fill = fill;
        wv.weak_bg_fill = fill;
    }
    w.noninteractive.bg_stroke = Stroke::new(1.0, p.border);
    w.noninteractive.fg_stroke = Stroke::new(1.0, p.text);
    w.inactive.fg_stroke = Stroke::new(1.0, p.text);
    w.inactive.bg_stroke = Stroke::new(1.0, p.border);
    w.hovered.fg_stroke = Stroke::new(1.5, p.text);
    w.hovered.bg_stroke = Stroke::new(1.0, p.accent);
    w.active.fg_stroke = Stroke::new(1.5, p.on_accent);
    w.open.fg_stroke = Stroke::new(1.0, p.text);
    style
}

/// A rounded card frame on the surface colour; the container every panel section uses.
pub fn card(ctx: &egui::Context) -> egui::Frame {
    let p = palette(ctx);
    egui::Frame::new()
        .fill(p.surface)
        .stroke(Stroke::new(1.0, p.border))
        .corner_radius(CornerRadius::same(radius::LG))
        .inner_margin(Margin::same(space::LG as i8))
}

/// The accent-filled primary button (Generate).
pub fn primary_button(ctx: &egui::Context, text: &str) -> egui::Button<'static> {
    let p = palette(ctx);
    egui::Button::new(
        egui::RichText::new(text.to_owned())
            .color(p.on_accent)
            .strong(),
    )
    .fill(p.accent)
    .corner_radius(CornerRadius::same(radius::MD))
    .min_size(Vec2::new(140.0, 34.0))
}
