//! The process group of a run: rank and world size from the launcher, and the collectives the
//! loops and evaluations use (MPI's world, or one process).
//!
//! PyTorch counterpart: `util/misc.py::init_distributed_mode` and the `torch.distributed`
//! collectives the official scripts call (`all_reduce`, `all_gather`, `barrier`).

use crate::error::TrainError;

/// The process group of a run: rank, world size and the collectives the training loops use.
pub struct Comm {
    inner: Inner,
}

enum Inner {
    Single,
    #[cfg(feature = "mpi")]
    Mpi {
        // dropping the universe finalizes MPI: kept for the life of the `Comm`
        _universe: mpi::environment::Universe,
        world: mpi::topology::SimpleCommunicator,
    },
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Comm(rank {} of {})", self.rank(), self.world_size())
    }
}

/// The launcher's world size, where the environment names one: Open MPI's `mpirun`
/// (`OMPI_COMM_WORLD_SIZE`), MPICH/Hydra and PMI launchers (`PMI_SIZE`), Slurm's `srun --mpi=pmix`
/// (`PMIX_RANK` with `SLURM_NTASKS`).
pub fn launcher_world_size() -> Option<usize> {
    let var = |k: &str| std::env::var(k).ok()?.trim().parse::<usize>().ok();
    var("OMPI_COMM_WORLD_SIZE")
        .or_else(|| var("PMI_SIZE"))
        .or_else(|| std::env::var_os("PMIX_RANK").and_then(|_| var("SLURM_NTASKS")))
}

/// This process's rank among the ranks of its node, from the launcher (`mpirun`'s
/// `OMPI_COMM_WORLD_LOCAL_RANK`, Hydra's `MPI_LOCALRANKID`, Slurm's `SLURM_LOCALID`); 0 when none
/// says. Each rank of a node takes GPU `local_rank % GPUs`.
pub fn local_rank() -> usize {
    let var = |k: &str| std::env::var(k).ok()?.trim().parse::<usize>().ok();
    var("OMPI_COMM_WORLD_LOCAL_RANK")
        .or_else(|| var("MPI_LOCALRANKID"))
        .or_else(|| var("SLURM_LOCALID"))
        .unwrap_or(0)
}

impl Comm {
    /// One process: rank 0 of 1; every collective is the identity.
    pub fn single() -> Self {
        Comm {
            inner: Inner::Single,
        }
    }

    /// MPI's world when launched as one of several ranks (and built with the `mpi` feature), one
    /// process otherwise. Call it once, early: MPI can be initialized once per process.
    pub fn from_env() -> Result<Self, TrainError> {
        let launched = launcher_world_size().is_some_and(|n| n > 1);
        if !launched {
            return Ok(Self::single());
        }
        Self::init_mpi()
    }

    #[cfg(feature = "mpi")]
    fn init_mpi() -> Result<Self, TrainError> {
        use mpi::topology::Communicator;
        // only the thread that calls `Comm`'s methods talks to MPI (rayon's workers never do)
        let (universe, _level) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| TrainError::Dist("MPI was already initialized".into()))?;
        let world = universe.world();
        let launched = launcher_world_size().unwrap_or(0);
        if world.size() as usize != launched || world.rank() < 0 {
            return Err(TrainError::Dist(format!(
                "the launcher started {launched} ranks but MPI reports rank {} of {} (under \
                 Slurm, launch with `srun --mpi=pmix`)",
                world.rank(),
                world.size()
            )));
        }
        Ok(Comm {
            inner: Inner::Mpi {
                _universe: universe,
                world,
            },
        })
    }

    #[cfg(not(feature = "mpi"))]
    fn init_mpi() -> Result<Self, TrainError> {
        Err(TrainError::Dist(format!(
            "started as one of {} ranks (mpirun/srun), but this `mae` was built without MPI: \
             rebuild it with `cargo build --release -p mae-cli --features mpi` (needs Open MPI's \
             `libopenmpi-dev` and libclang), or run it without mpirun",
            launcher_world_size().unwrap_or(0)
        )))
    }

    /// This process's rank, `0..world_size`.
    pub fn rank(&self) -> usize {
        match &self.inner {
            Inner::Single => 0,
            #[cfg(feature = "mpi")]
            Inner::Mpi { world, .. } => {
                use mpi::topology::Communicator;
                world.rank() as usize
            }
        }
    }

    /// The number of ranks.
    pub fn world_size(&self) -> usize {
        match &self.inner {
            Inner::Single => 1,
            #[cfg(feature = "mpi")]
            Inner::Mpi { world, .. } => {
                use mpi::topology::Communicator;
                world.size() as usize
            }
        }
    }

    /// An error unless a configuration made for `configured` ranks runs on this many.
    pub fn check_world_size(&self, configured: usize) -> Result<(), TrainError> {
        if configured == self.world_size() {
            Ok(())
        } else {
            Err(TrainError::Config(format!(
                "the configuration is for {configured} rank(s), the run has {}",
                self.world_size()
            )))
        }
    }

    /// Rank 0: the one that writes checkpoints, metrics and progress.
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// Sums `send` over the ranks into `recv` (same length).
    pub fn all_reduce_sum(&self, send: &[f32], recv: &mut [f32]) -> Result<(), TrainError> {
        if send.len() != recv.len() {
            return Err(TrainError::Dist(format!(
                "all-reduce of {} values into {}",
                send.len(),
                recv.len()
            )));
        }
        match &self.inner {
            Inner::Single => recv.copy_from_slice(send),
            #[cfg(feature = "mpi")]
            Inner::Mpi { world, .. } => {
                use mpi::collective::{CommunicatorCollectives, SystemOperation};
                world.all_reduce_into(send, recv, SystemOperation::sum());
            }
        }
        Ok(())
    }

    /// Every rank's `value`, in rank order.
    pub fn all_gather_u64(&self, value: u64) -> Vec<u64> {
        match &self.inner {
            Inner::Single => vec![value],
            #[cfg(feature = "mpi")]
            Inner::Mpi { world, .. } => {
                use mpi::collective::CommunicatorCollectives;
                let mut all = vec![0u64; self.world_size()];
                world.all_gather_into(&value, &mut all[..]);
                all
            }
        }
    }

    /// Every rank's `send` (the same length on every rank), concatenated in rank order.
    pub fn all_gather_f32(&self, send: &[f32]) -> Result<Vec<f32>, TrainError> {
        match &self.inner {
            Inner::Single => Ok(send.to_vec()),
            #[cfg(feature = "mpi")]
            Inner::Mpi { world, .. } => {
                use mpi::collective::CommunicatorCollectives;
                let lengths = self.all_gather_u64(send.len() as u64);
                if lengths.iter().any(|&l| l != send.len() as u64) {
                    return Err(TrainError::Dist(format!(
                        "all-gather of unequal lengths {lengths:?}"
                    )));
                }
                let mut all = vec![0f32; send.len() * self.world_size()];
                world.all_gather_into(send, &mut all[..]);
                Ok(all)
            }
        }
    }

    /// Rank 0's `buf` into every rank's `buf` (the same length everywhere).
    pub fn broadcast_bytes(&self, buf: &mut [u8]) {
        #[cfg(feature = "mpi")]
        if let Inner::Mpi { world, .. } = &self.inner {
            use mpi::collective::Root;
            use mpi::topology::Communicator;
            world.process_at_rank(0).broadcast_into(buf);
        }
        #[cfg(not(feature = "mpi"))]
        let _ = buf;
    }

    /// Waits for every rank.
    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if let Inner::Mpi { world, .. } = &self.inner {
            use mpi::collective::CommunicatorCollectives;
            world.barrier();
        }
    }

    /// Ends the whole job (every rank) with `code`, after printing `message` on this one: what a
    /// rank does on an error, so that the others do not wait for it forever. With one process it
    /// only exits.
    pub fn abort(&self, message: &str, code: i32) -> ! {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "rank {} of {}: {message}",
            self.rank(),
            self.world_size()
        );
        match &self.inner {
            Inner::Single => std::process::exit(code),
            #[cfg(feature = "mpi")]
            Inner::Mpi { world, .. } => {
                use mpi::topology::Communicator;
                world.abort(code)
            }
        }
    }
}
