//! Loading the eBPF object: map sizes chosen at load time, the two programs
//! loaded into the kernel, and attaching them to interfaces.

use aya::{
    Ebpf, EbpfLoader,
    programs::{Xdp, XdpMode, xdp::XdpLinkId},
};
use lb_common::maps::*;

use crate::EBPF_OBJECT;

/// Sizes of the maps that scale with the deployment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub max_vips: u32,
    pub max_backends: u32,
    /// Maglev ring size M (a prime).
    pub ring_size: u32,
    pub conn_entries: u32,
    pub frag_entries: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            max_vips: DEFAULT_MAX_VIPS,
            max_backends: DEFAULT_MAX_BACKENDS,
            ring_size: DEFAULT_RING_SIZE,
            conn_entries: DEFAULT_CONN_ENTRIES,
            frag_entries: DEFAULT_FRAG_ENTRIES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("ring size {0} is too large: {1} VIPs x 2 rings x {0} slots overflow the ring map")]
    RingTooLarge(u32, u32),
}

/// The loaded programs and their maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub sizes: MapSizes,
}

impl Datapath {
    /// Load the object with `sizes` and load both programs into the kernel
    /// (which runs the verifier on them). Nothing is attached yet.
    pub fn load(sizes: MapSizes) -> Result<Self, DatapathError> {
        let ring_entries = sizes
            .max_vips
            .checked_mul(2)
            .and_then(|n| n.checked_mul(sizes.ring_size))
            .ok_or(DatapathError::RingTooLarge(sizes.ring_size, sizes.max_vips))?;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_VIPS, sizes.max_vips)
            .map_max_entries(MAP_VIP_STATS, sizes.max_vips)
            .map_max_entries(MAP_BACKENDS, sizes.max_backends)
            .map_max_entries(MAP_BACKEND_STATS, sizes.max_backends)
            .map_max_entries(MAP_RINGS, ring_entries)
            .map_max_entries(MAP_CONNS, sizes.conn_entries)
            .map_max_entries(MAP_FRAGS, sizes.frag_entries)
            .load(EBPF_OBJECT)?;
        for name in [PROG_LB, PROG_DECAP] {
            let prog = xdp_program(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        Ok(Self { ebpf, sizes })
    }

    /// The load balancer program (`lb`).
    pub fn lb(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp_program(&mut self.ebpf, PROG_LB)
    }

    /// The backend-side decapsulation program (`lb_decap`).
    pub fn decap(&mut self) -> Result<&mut Xdp, DatapathError> {
        xdp_program(&mut self.ebpf, PROG_DECAP)
    }

    /// Attach program `name` to `iface` in `mode`.
    pub fn attach(
        &mut self,
        name: &'static str,
        iface: &str,
        mode: XdpMode,
    ) -> Result<XdpLinkId, DatapathError> {
        let prog = xdp_program(&mut self.ebpf, name)?;
        prog.attach(iface, mode)
            .map_err(|source| DatapathError::Program { name, source })
    }
}

fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?;
    prog.try_into()
        .map_err(|source| DatapathError::Program { name, source })
}
