//! Orbit camera: yaw/pitch around a target point, pitch clamped just short of the
//! poles so the view never flips. Right-handed, +Y up, the front of a mesh faces +Z.

use glam::{Mat4, Vec2, Vec3};

/// Preset viewing directions. `Front` looks at the mesh's +Z side (the side of the
/// input image), `Right` at its +X side, `Top` down from +Y.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum View {
    #[default]
    Front,
    Back,
    Left,
    Right,
    Top,
    Bottom,
    /// Three-quarter view from front-right-above (isometric angles).
    Iso,
}

impl View {
    pub const ALL: [Self; 7] = [
        Self::Front,
        Self::Back,
        Self::Left,
        Self::Right,
        Self::Top,
        Self::Bottom,
        Self::Iso,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Front => "front",
            Self::Back => "back",
            Self::Left => "left",
            Self::Right => "right",
            Self::Top => "top",
            Self::Bottom => "bottom",
            Self::Iso => "iso",
        }
    }

    /// Parses the lower-case names the CLI uses (`front`, `iso`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(name))
    }

    /// `(yaw, pitch)` in radians. Yaw 0 puts the eye on +Z; positive yaw turns
    /// the eye towards +X; positive pitch raises it towards +Y.
    fn angles_rad(self) -> (f32, f32) {
        use std::f32::consts::{FRAC_PI_2, FRAC_PI_4, PI};
        match self {
            Self::Front => (0.0, 0.0),
            Self::Back => (PI, 0.0),
            Self::Right => (FRAC_PI_2, 0.0),
            Self::Left => (-FRAC_PI_2, 0.0),
            Self::Top => (0.0, MAX_PITCH_RAD),
            Self::Bottom => (0.0, -MAX_PITCH_RAD),
            // atan(1/√2): the elevation of a cube's diagonal.
            Self::Iso => (FRAC_PI_4, 0.615_479_7),
        }
    }
}

/// Pitch stops a hair short of straight up/down: at exactly ±90° yaw would be
/// undefined and a drag across the pole would flip the view.
pub const MAX_PITCH_RAD: f32 = std::f32::consts::FRAC_PI_2 - 1e-3;

/// Axis-aligned bounds of what the camera frames.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    pub min: Vec3,
    pub max: Vec3,
}

impl Bounds {
    pub fn from_min_max(min: [f32; 3], max: [f32; 3]) -> Self {
        Self {
            min: Vec3::from(min),
            max: Vec3::from(max),
        }
    }

    pub fn center(&self) -> Vec3 {
        (self.min + self.max) * 0.5
    }

    /// Radius of the sphere around the box; never zero so a single point still frames.
    pub fn radius(&self) -> f32 {
        ((self.max - self.min).length() * 0.5).max(1e-3)
    }

    pub fn size(&self) -> Vec3 {
        self.max - self.min
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OrbitCamera {
    pub target: Vec3,
    pub distance: f32,
    pub yaw_rad: f32,
    pub pitch_rad: f32,
    pub fov_y_rad: f32,
    /// Radius of the framed scene, for the near and far planes.
    pub scene_radius: f32,
}

impl Default for OrbitCamera {
    fn default() -> Self {
        Self {
            target: Vec3::ZERO,
            distance: 3.0,
            yaw_rad: 0.0,
            pitch_rad: 0.0,
            fov_y_rad: 40f32.to_radians(),
            scene_radius: 1.0,
        }
    }
}

/// Radians of orbit per pixel dragged.
const ORBIT_RAD_PER_PX: f32 = 0.008;
/// Margin around a fitted mesh, as a factor on the bounding sphere.
const FIT_MARGIN: f32 = 1.1;

impl OrbitCamera {
    /// A camera looking from `view` at `bounds`, fitted to show all of it.
    pub fn framing(bounds: &Bounds, view: View, aspect: f32) -> Self {
        let mut camera = Self::default();
        camera.set_view(view);
        camera.fit(bounds, aspect);
        camera
    }

    pub fn set_view(&mut self, view: View) {
        (self.yaw_rad, self.pitch_rad) = view.angles_rad();
    }

    /// Centres the target on `bounds` and backs off until its bounding sphere
    /// fits the narrower field of view.
    pub fn fit(&mut self, bounds: &Bounds, aspect: f32) {
        let radius = bounds.radius();
        let half_fov_y = self.fov_y_rad * 0.5;
        let half_fov_x = (half_fov_y.tan() * aspect.max(1e-3)).atan();
        let half_fov = half_fov_y.min(half_fov_x);
        self.target = bounds.center();
        self.distance = radius * FIT_MARGIN / half_fov.sin();
        self.scene_radius = radius;
    }

    /// Unit vector from the target towards the eye.
    pub fn backward(&self) -> Vec3 {
        let (sin_yaw, cos_yaw) = self.yaw_rad.sin_cos();
        let (sin_pitch, cos_pitch) = self.pitch_rad.sin_cos();
        Vec3::new(cos_pitch * sin_yaw, sin_pitch, cos_pitch * cos_yaw)
    }

    /// The camera's up direction: the derivative of `backward` by pitch, so it
    /// stays well defined however close to a pole the pitch gets.
    pub fn up(&self) -> Vec3 {
        let (sin_yaw, cos_yaw) = self.yaw_rad.sin_cos();
        let (sin_pitch, cos_pitch) = self.pitch_rad.sin_cos();
        Vec3::new(-sin_pitch * sin_yaw, cos_pitch, -sin_pitch * cos_yaw)
    }

    pub fn right(&self) -> Vec3 {
        self.up().cross(self.backward())
    }

    pub fn eye(&self) -> Vec3 {
        self.target + self.backward() * self.distance
    }

    pub fn view_from_world(&self) -> Mat4 {
        Mat4::look_at_rh(self.eye(), self.target, self.up())
    }

    /// Near and far planes that hold the scene and the ground grid around it.
    pub fn near_far(&self) -> (f32, f32) {
        let near = (self.distance - self.scene_radius * 4.0)
            .max(self.distance * 0.01)
            .max(1e-4);
        let far = self.distance + self.scene_radius * 16.0;
        (near, far)
    }

    /// Perspective projection into wgpu's clip space (depth 0..1).
    pub fn clip_from_view(&self, aspect: f32) -> Mat4 {
        let (near, far) = self.near_far();
        Mat4::perspective_rh(self.fov_y_rad, aspect.max(1e-3), near, far)
    }

    pub fn clip_from_world(&self, aspect: f32) -> Mat4 {
        self.clip_from_view(aspect) * self.view_from_world()
    }

    /// Orbits by a drag of `delta_px` (right drag turns the eye to the left of the mesh,
    /// i.e. the mesh turns with the pointer).
    pub fn orbit(&mut self, delta_px: Vec2) {
        self.yaw_rad = (self.yaw_rad - delta_px.x * ORBIT_RAD_PER_PX) % std::f32::consts::TAU;
        self.pitch_rad =
            (self.pitch_rad + delta_px.y * ORBIT_RAD_PER_PX).clamp(-MAX_PITCH_RAD, MAX_PITCH_RAD);
    }

    /// World units per pixel at the target's depth.
    fn units_per_px(&self, viewport_height_px: f32) -> f32 {
        2.0 * self.distance * (self.fov_y_rad * 0.5).tan() / viewport_height_px.max(1.0)
    }

    /// Moves the target so the point under the pointer follows a drag of `delta_px`.
    pub fn pan(&mut self, delta_px: Vec2, viewport_height_px: f32) {
        let scale = self.units_per_px(viewport_height_px);
        self.target += (-self.right() * delta_px.x + self.up() * delta_px.y) * scale;
    }

    /// Scales the distance by `factor` (< 1 zooms in), keeping the point under
    /// `cursor_ndc` (−1..1, +y up) in place on the plane through the target.
    pub fn zoom_toward(&mut self, factor: f32, cursor_ndc: Vec2, aspect: f32) {
        let factor = factor.clamp(0.05, 20.0);
        let half_height = self.distance * (self.fov_y_rad * 0.5).tan();
        let under_cursor = self.target
            + self.right() * cursor_ndc.x * half_height * aspect
            + self.up() * cursor_ndc.y * half_height;
        self.target = under_cursor + (self.target - under_cursor) * factor;
        let min_distance = self.scene_radius * 1e-3;
        let max_distance = self.scene_radius * 200.0;
        self.distance = (self.distance * factor).clamp(min_distance, max_distance);
    }

    /// Turns the eye around the vertical axis (turntable), in radians.
    pub fn turn(&mut self, angle_rad: f32) {
        self.yaw_rad = (self.yaw_rad + angle_rad) % std::f32::consts::TAU;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_view_looks_down_negative_z() {
        let camera =
            OrbitCamera::framing(&Bounds::from_min_max([-1.0; 3], [1.0; 3]), View::Front, 1.0);
        assert!(camera.eye().z > 1.0);
        assert!(camera.eye().x.abs() < 1e-4);
    }

    #[test]
    fn orbit_never_passes_the_pole() {
        let mut camera = OrbitCamera::default();
        for _ in 0..100 {
            camera.orbit(Vec2::new(0.0, 100.0));
        }
        assert!(camera.pitch_rad <= MAX_PITCH_RAD);
        // Still a proper right-handed basis, no flip.
        assert!(camera.up().y > 0.0);
        assert!((camera.right().length() - 1.0).abs() < 1e-3);
    }

    #[test]
    fn zoom_keeps_the_point_under_the_cursor() {
        let mut camera = OrbitCamera::default();
        let before = camera.clip_from_world(1.0);
        let world = camera.target + camera.right() * 0.3 + camera.up() * 0.2;
        let ndc_before = before.project_point3(world);
        camera.zoom_toward(0.5, ndc_before.truncate(), 1.0);
        let ndc_after = camera.clip_from_world(1.0).project_point3(world);
        assert!((ndc_after.truncate() - ndc_before.truncate()).length() < 1e-3);
    }
}
