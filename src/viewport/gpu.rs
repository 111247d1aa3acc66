//! Which graphics API to use and what the device can do: the scene renderer
//! picks its draw paths from [`RenderCaps`], so one binary runs on Vulkan,
//! Metal and DX12 adapters as well as on downlevel GL/GLES (old laptops, VMs,
//! remote desktops, Mesa's llvmpipe).

use eframe::egui_wgpu::wgpu;

/// A graphics API the user can force with `--backend` or `ORFEAS_BACKEND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum GpuBackend {
    Vulkan,
    /// OpenGL / OpenGL ES (EGL on Linux, WGL on Windows).
    Gl,
    Dx12,
    Metal,
}

impl GpuBackend {
    pub fn backends(self) -> wgpu::Backends {
        match self {
            Self::Vulkan => wgpu::Backends::VULKAN,
            Self::Gl => wgpu::Backends::GL,
            Self::Dx12 => wgpu::Backends::DX12,
            Self::Metal => wgpu::Backends::METAL,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Vulkan => "vulkan",
            Self::Gl => "gl",
            Self::Dx12 => "dx12",
            Self::Metal => "metal",
        }
    }
}

/// The backends to look for adapters on: the forced one, else `WGPU_BACKEND`,
/// else every backend this build has (GL included, as the last resort wgpu
/// itself falls back to).
pub fn instance_backends(forced: Option<GpuBackend>) -> wgpu::Backends {
    forced.map_or_else(
        || wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY | wgpu::Backends::GL),
        GpuBackend::backends,
    )
}

/// The optional device abilities the scene renderer has a fallback for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenderCaps {
    /// At least two read-only storage buffers in the vertex stage: the
    /// wireframe pulls shared vertices by index. Without: the wireframe is
    /// drawn from a vertex buffer with one vertex per triangle corner.
    pub vertex_storage: bool,
    /// Textures viewed in a second format: the viewport reads its sRGB image
    /// raw for a non-sRGB egui target. Without: the blit shader re-encodes.
    pub view_formats: bool,
}

impl RenderCaps {
    /// Everything the full paths use.
    pub const FULL: Self = Self {
        vertex_storage: true,
        view_formats: true,
    };
    /// Neither: the paths a WebGL2-class device gets.
    pub const DOWNLEVEL: Self = Self {
        vertex_storage: false,
        view_formats: false,
    };

    /// What `device` (created from `adapter`) offers. The device's limits
    /// count, not the adapter's: eframe opens GL devices with WebGL2 limits
    /// (no storage buffers) even where the driver has more.
    pub fn of(adapter: &wgpu::Adapter, device: &wgpu::Device) -> Self {
        let flags = adapter.get_downlevel_capabilities().flags;
        Self {
            vertex_storage: flags.contains(wgpu::DownlevelFlags::VERTEX_STORAGE)
                && device.limits().max_storage_buffers_per_shader_stage >= 2,
            view_formats: flags.contains(wgpu::DownlevelFlags::VIEW_FORMATS),
        }
    }

    /// Both this and `other` (to force fallbacks on a capable device).
    pub fn intersect(self, other: Self) -> Self {
        Self {
            vertex_storage: self.vertex_storage && other.vertex_storage,
            view_formats: self.view_formats && other.view_formats,
        }
    }

    pub fn is_full(self) -> bool {
        self == Self::FULL
    }

    /// What the device lacks, for the viewer and logs ("" when nothing).
    pub fn missing(self) -> String {
        let mut missing = Vec::new();
        if !self.vertex_storage {
            missing.push("vertex-stage storage buffers");
        }
        if !self.view_formats {
            missing.push("texture view formats");
        }
        missing.join(", ")
    }
}

/// "name (backend, device type)", for logs, the viewer and `orfeas render`.
pub fn describe_adapter(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_each_absent_ability() {
        assert_eq!(RenderCaps::FULL.missing(), "");
        assert_eq!(
            RenderCaps::DOWNLEVEL.missing(),
            "vertex-stage storage buffers, texture view formats"
        );
        let partial = RenderCaps::FULL.intersect(RenderCaps {
            vertex_storage: true,
            view_formats: false,
        });
        assert_eq!(partial.missing(), "texture view formats");
        assert!(!partial.is_full());
    }

    #[test]
    fn a_forced_backend_is_the_only_one_searched() {
        assert_eq!(instance_backends(Some(GpuBackend::Gl)), wgpu::Backends::GL);
        assert_eq!(
            instance_backends(Some(GpuBackend::Vulkan)),
            wgpu::Backends::VULKAN
        );
    }
}
