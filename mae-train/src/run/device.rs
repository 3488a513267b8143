//! Which device a command computes on: `--device cpu|cuda`.
//!
//! PyTorch counterpart: `--device` of `main_pretrain.py` (`torch.device(args.device)`).
//! `cuda` needs a build with the `cuda` feature (dfdx's `Cuda`, through cudarc) and an NVIDIA GPU;
//! asked for where either is missing it is an error that says which.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use mae_core::device::MaeDevice;
use mae_core::dfdx::prelude::{Cache, Cpu, Synchronize};
use mae_core::{AmpF16, MaePreset, Preset, PresetVisitor};

use crate::error::TrainError;

/// A compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The host CPU (our fused kernels).
    #[default]
    Cpu,
    /// The first NVIDIA GPU (dfdx's `Cuda`).
    Cuda,
}

impl FromStr for DeviceKind {
    type Err = TrainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda),
            other => Err(TrainError::Config(format!(
                "unknown device `{other}` (cpu or cuda)"
            ))),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        })
    }
}

/// A device the loops and evaluations run on: dfdx's `Cpu`, or `Cuda` in a `cuda` build, in
/// `f32` and in mixed precision.
pub trait RunDevice: MaeDevice + MaeDevice<AmpF16> + Cache + Synchronize + 'static {}

impl<D: MaeDevice + MaeDevice<AmpF16> + Cache + Synchronize + 'static> RunDevice for D {}

/// Code generic over the device, run on the one a [`DeviceKind`] names ([`DeviceKind::run`]).
pub(crate) trait DeviceVisitor {
    /// What the code returns.
    type Output;
    /// Runs on `dev`.
    fn visit<D: RunDevice>(self, dev: D) -> Result<Self::Output, TrainError>;
}

/// Code generic over the model preset and the device: [`dispatch`] runs it with the types a
/// runtime [`Preset`] and [`DeviceKind`] name. The one way from run-time names to typed code.
pub trait Job {
    /// What the code returns.
    type Output;
    /// Checks that need the preset's types but not the device (the data against the preset),
    /// made before the device opens.
    fn check<P: MaePreset>(&self) -> Result<(), TrainError> {
        Ok(())
    }
    /// The code, with preset `P` on `dev`.
    fn run<P: MaePreset, D: RunDevice>(self, dev: D) -> Result<Self::Output, TrainError>;
}

/// Runs `job` with the types of `preset` on `device` (dfdx's RNG seeded with `seed`), after its
/// [`Job::check`]; a clear error where CUDA is asked for and this build or machine has none.
pub fn dispatch<J: Job>(
    preset: Preset,
    device: DeviceKind,
    seed: u64,
    job: J,
) -> Result<J::Output, TrainError> {
    preset.visit(OnPreset { job, device, seed })
}

/// [`dispatch`]'s step from the preset's name to its type.
struct OnPreset<J> {
    job: J,
    device: DeviceKind,
    seed: u64,
}

impl<J: Job> PresetVisitor for OnPreset<J> {
    type Output = Result<J::Output, TrainError>;
    fn visit<P: MaePreset>(self) -> Self::Output {
        self.job.check::<P>()?;
        let on = OnDevice::<J, P> {
            job: self.job,
            preset: PhantomData,
        };
        self.device.run(self.seed, on)
    }
}

/// [`dispatch`]'s step from the device's name to its type.
struct OnDevice<J, P> {
    job: J,
    preset: PhantomData<P>,
}

impl<J: Job, P: MaePreset> DeviceVisitor for OnDevice<J, P> {
    type Output = J::Output;
    fn visit<D: RunDevice>(self, dev: D) -> Result<J::Output, TrainError> {
        self.job.run::<P, D>(dev)
    }
}

impl DeviceKind {
    /// Opens the device (dfdx's RNG seeded with `seed`) and runs `visitor` on it; a clear error
    /// where CUDA is asked for and this build or this machine has none.
    pub(crate) fn run<V: DeviceVisitor>(
        self,
        seed: u64,
        visitor: V,
    ) -> Result<V::Output, TrainError> {
        match self {
            DeviceKind::Cpu => visitor.visit(Cpu::seed_from_u64(seed)),
            #[cfg(feature = "cuda")]
            DeviceKind::Cuda => visitor.visit(cuda_device(seed)?),
            #[cfg(not(feature = "cuda"))]
            DeviceKind::Cuda => Err(cuda_missing()),
        }
    }
}

/// The GPU of this rank (GPU `local_rank % GPUs`: GPU 0 for one process) with dfdx's RNG seeded
/// by `seed`, or an error saying why there is none.
#[cfg(feature = "cuda")]
pub fn cuda_device(seed: u64) -> Result<mae_core::dfdx::prelude::Cuda, TrainError> {
    // cudarc 0.9's `CudaDevice::new` unwraps `cuInit` and `cuDeviceGet`: ask the driver first, so
    // that a machine without a GPU gets an error, not a panic
    use cudarc::driver::result;
    let no_gpu = |what: &str, e: result::DriverError| {
        TrainError::Device(format!("--device cuda: {what}: driver error {:?}", e.0))
    };
    result::init().map_err(|e| no_gpu("the CUDA driver did not initialize", e))?;
    let count = result::device::get_count().map_err(|e| no_gpu("no CUDA device", e))?;
    if count < 1 {
        return Err(TrainError::Device("--device cuda: no CUDA device".into()));
    }
    // under mpirun each rank of a node takes its own GPU
    let ordinal = crate::dist::local_rank() % count as usize;
    mae_core::dfdx::prelude::Cuda::try_build(ordinal, seed).map_err(|e| {
        TrainError::Device(format!(
            "CUDA device {ordinal} could not be opened: {}",
            describe_cuda_error(&e)
        ))
    })
}

/// A CUDA error in words, without asking the driver: cudarc's `Debug` of a driver error calls
/// `cuGetErrorString` and panics when that fails too (a broken or stub `libcuda`).
#[cfg(feature = "cuda")]
pub fn describe_cuda_error(e: &mae_core::dfdx::tensor::CudaError) -> String {
    use mae_core::dfdx::tensor::CudaError;
    match e {
        CudaError::Driver(d) => format!("driver error {:?}", d.0),
        CudaError::Blas(b) => format!("cuBLAS error {:?}", b.0),
        CudaError::Cpu(c) => format!("{c:?}"),
        #[allow(unreachable_patterns)]
        _ => "CUDA error".to_string(),
    }
}

/// Device memory in use on this thread's GPU (`total − free` of `cuMemGetInfo`), MiB; `None` in
/// a build without CUDA or where the driver does not say. With dfdx's allocation cache on, freed
/// buffers stay allocated, so after a few training steps this is their high-water mark plus the
/// CUDA context: an upper bound of what PyTorch's `max_memory_allocated` counts.
pub fn gpu_memory_used_mb() -> Option<f64> {
    #[cfg(feature = "cuda")]
    {
        let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
        Some(total.saturating_sub(free) as f64 / (1024.0 * 1024.0))
    }
    #[cfg(not(feature = "cuda"))]
    None
}

/// The error of a build without the `cuda` feature asked for the GPU.
pub fn cuda_missing() -> TrainError {
    TrainError::Config(
        "--device cuda: this `mae` was built without CUDA; build it with `cargo xtask gpu-build` \
         (or `cargo build --release -p mae-cli --features cuda` where a CUDA toolkit is installed)"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for d in [DeviceKind::Cpu, DeviceKind::Cuda] {
            assert_eq!(d.to_string().parse::<DeviceKind>().ok(), Some(d));
        }
        let err = "gpu"
            .parse::<DeviceKind>()
            .expect_err("not a device")
            .to_string();
        assert!(
            err.contains("`gpu`") && err.contains("cpu or cuda"),
            "{err}"
        );
    }
}
