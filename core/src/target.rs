//! Compilation targets: which triples and CPU feature levels thaw builds
//! for. Plain data, so that the registry, clients and runners can name and
//! choose targets without linking a compiler.

/// A compilation target: a triple plus the exact Cranelift ISA flags.
///
/// Flags are explicit so that an artifact never silently requires the build
/// host's CPU features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetProfile {
    /// What users type (`--target`). A baseline profile is named by its
    /// triple; a profile for newer CPUs of the same triple has its own name.
    pub name: &'static str,
    /// The target triple.
    pub triple: &'static str,
    /// Cranelift ISA flags enabled on top of the architecture's baseline.
    pub isa_flags: &'static [&'static str],
    /// What hardware this runs on, for humans.
    pub description: &'static str,
}

/// The targets thaw builds for.
pub const TARGETS: &[TargetProfile] = &[
    TargetProfile {
        name: "x86_64-unknown-linux-gnu",
        triple: "x86_64-unknown-linux-gnu",
        // x86-64-v2: every x86-64 server CPU since Nehalem (2008) has these,
        // and Cranelift's SIMD lowering leans on SSE4.1.
        isa_flags: &[
            "has_sse3",
            "has_ssse3",
            "has_cmpxchg16b",
            "has_sse41",
            "has_sse42",
            "has_popcnt",
        ],
        description: "x86-64-v2 (SSE4.2, POPCNT): any x86-64 CPU since 2008",
    },
    TargetProfile {
        name: "x86_64-v3",
        triple: "x86_64-unknown-linux-gnu",
        // x86-64-v3 as far as Cranelift has flags for it: AVX2, FMA, BMI1/2
        // and LZCNT on top of v2. Opt-in; a runner uses it only on CPUs that
        // have every flag, and falls back to the baseline otherwise.
        isa_flags: &[
            "has_sse3",
            "has_ssse3",
            "has_cmpxchg16b",
            "has_sse41",
            "has_sse42",
            "has_popcnt",
            "has_avx",
            "has_avx2",
            "has_fma",
            "has_bmi1",
            "has_bmi2",
            "has_lzcnt",
        ],
        description: "x86-64-v3 (AVX2, FMA, BMI2): Haswell (2013), Zen and newer",
    },
    TargetProfile {
        name: "aarch64-unknown-linux-gnu",
        triple: "aarch64-unknown-linux-gnu",
        isa_flags: &[],
        description: "ARMv8.0-A baseline: Graviton, Ampere, Raspberry Pi 4 and newer",
    },
];

/// A target triple thaw has no profile for.
#[derive(Debug, thiserror::Error)]
#[error(
    "unsupported target {name:?}; supported targets: {}",
    supported_names()
)]
pub struct UnsupportedTarget {
    /// The requested name.
    pub name: String,
}

fn supported_names() -> String {
    TARGETS
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl TargetProfile {
    /// The profile called `name` (a baseline's name is its triple).
    pub fn by_name(name: &str) -> Result<&'static TargetProfile, UnsupportedTarget> {
        TARGETS
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| UnsupportedTarget {
                name: name.to_string(),
            })
    }

    /// The baseline profile for the machine this process runs on.
    pub fn host() -> Result<&'static TargetProfile, UnsupportedTarget> {
        Self::by_name(&host_triple())
    }
}

/// The triple of the machine this process runs on.
pub fn host_triple() -> String {
    target_lexicon::HOST.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_target_is_found_by_its_triple() {
        for t in TARGETS {
            assert_eq!(TargetProfile::by_name(t.name).unwrap(), t);
        }
        let v3 = TargetProfile::by_name("x86_64-v3").unwrap();
        assert_eq!(v3.triple, "x86_64-unknown-linux-gnu");
        let err = TargetProfile::by_name("riscv64gc-unknown-linux-gnu").unwrap_err();
        assert!(
            err.to_string().contains("aarch64-unknown-linux-gnu"),
            "{err}"
        );
    }
}
