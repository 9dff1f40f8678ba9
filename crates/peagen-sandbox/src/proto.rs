//! What the child tells the supervisor on the status pipe: messages of
//! three `i32`s, `[tag, a, b]`, and the numbered set-up steps they name.

/// Set-up steps of the child, in order; a failure names one of them.
#[repr(i32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Release = 0,
    UnshareCgroupns = 1,
    Setgroups = 2,
    Setresgid = 3,
    Setresuid = 4,
    MountsPrivate = 5,
    RootTmpfs = 6,
    BuildRoot = 7,
    WorkTmpfs = 8,
    Proc = 9,
    PivotRoot = 10,
    RootReadOnly = 11,
    /// The request's files; a failure here is the user's (e.g. too big for
    /// the tmpfs), not the sandbox's.
    WriteFiles = 12,
    ChdirWork = 13,
    Setrlimit = 14,
    Securebits = 15,
    DropBoundingSet = 16,
    ClearAmbient = 17,
    Capset = 18,
    NoNewPrivs = 19,
    NotDumpable = 20,
    Landlock = 21,
    Seccomp = 22,
    FileDescriptors = 23,
    Fork = 24,
    NestedLandlock = 25,
}

impl Step {
    pub const ALL: [Step; 26] = [
        Step::Release,
        Step::UnshareCgroupns,
        Step::Setgroups,
        Step::Setresgid,
        Step::Setresuid,
        Step::MountsPrivate,
        Step::RootTmpfs,
        Step::BuildRoot,
        Step::WorkTmpfs,
        Step::Proc,
        Step::PivotRoot,
        Step::RootReadOnly,
        Step::WriteFiles,
        Step::ChdirWork,
        Step::Setrlimit,
        Step::Securebits,
        Step::DropBoundingSet,
        Step::ClearAmbient,
        Step::Capset,
        Step::NoNewPrivs,
        Step::NotDumpable,
        Step::Landlock,
        Step::Seccomp,
        Step::FileDescriptors,
        Step::Fork,
        Step::NestedLandlock,
    ];

    /// The step with wire id `id`, if any.
    pub fn from_id(id: i32) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as i32 == id)
    }

    /// The name used in verdict messages.
    pub fn name(self) -> &'static str {
        match self {
            Step::Release => "release",
            Step::UnshareCgroupns => "unshare cgroupns",
            Step::Setgroups => "setgroups",
            Step::Setresgid => "setresgid",
            Step::Setresuid => "setresuid",
            Step::MountsPrivate => "make mounts private",
            Step::RootTmpfs => "mount root tmpfs",
            Step::BuildRoot => "build root",
            Step::WorkTmpfs => "mount work tmpfs",
            Step::Proc => "mount /proc",
            Step::PivotRoot => "pivot_root",
            Step::RootReadOnly => "remount root read-only",
            Step::WriteFiles => "write files",
            Step::ChdirWork => "chdir /work",
            Step::Setrlimit => "setrlimit",
            Step::Securebits => "securebits",
            Step::DropBoundingSet => "drop bounding set",
            Step::ClearAmbient => "clear ambient capabilities",
            Step::Capset => "capset",
            Step::NoNewPrivs => "no_new_privs",
            Step::NotDumpable => "not dumpable",
            Step::Landlock => "landlock",
            Step::Seccomp => "seccomp",
            Step::FileDescriptors => "file descriptors",
            Step::Fork => "fork",
            Step::NestedLandlock => "nested landlock domain",
        }
    }
}

/// Message tags (the first `i32`).
pub const TAG_SETUP: i32 = 1;
pub const TAG_EXEC: i32 = 2;
pub const TAG_EXIT: i32 = 3;
pub const TAG_CG_LOST: i32 = 4;

/// One message, as the supervisor reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// `[TAG_SETUP, step, errno]`: set-up failed; the child exits 121.
    Setup { step: Option<Step>, errno: i32 },
    /// `[TAG_EXEC, errno, 0]`: no `execve` of the command succeeded.
    Exec { errno: i32 },
    /// `[TAG_EXIT, wait status, 0]`: the user process ended.
    Exit { status: i32 },
    /// `[TAG_CG_LOST, limit bits, 0]`: v1 cgroups the child could not join.
    CgLost { bits: u8 },
}

/// Size of one message on the pipe.
pub const MSG_BYTES: usize = 12;
/// The most messages a run sends (cgroup lost, set-up or exec, exit).
pub const MAX_MSGS: usize = 4;

impl Report {
    pub fn parse(m: [i32; 3]) -> Option<Report> {
        Some(match m[0] {
            TAG_SETUP => Report::Setup {
                step: Step::from_id(m[1]),
                errno: m[2],
            },
            TAG_EXEC => Report::Exec { errno: m[1] },
            TAG_EXIT => Report::Exit { status: m[1] },
            TAG_CG_LOST => Report::CgLost { bits: m[1] as u8 },
            _ => return None,
        })
    }

    /// All whole messages in what was read from the pipe.
    pub fn parse_all(bytes: &[u8]) -> Vec<Report> {
        bytes
            .chunks_exact(MSG_BYTES)
            .filter_map(|c| {
                let w = |i: usize| i32::from_ne_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                Report::parse([w(0), w(4), w(8)])
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_ids_round_trip_and_are_distinct() {
        for (i, s) in Step::ALL.iter().enumerate() {
            assert_eq!(*s as i32, i as i32, "{s:?} out of order in ALL");
            assert_eq!(Step::from_id(*s as i32), Some(*s));
        }
        let mut names: Vec<_> = Step::ALL.iter().map(|s| s.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Step::ALL.len(), "two steps share a name");
        assert_eq!(Step::from_id(-1), None);
        assert_eq!(Step::from_id(Step::ALL.len() as i32), None);
        // The two prctl steps that once shared id 19.
        assert_ne!(Step::NoNewPrivs as i32, Step::NotDumpable as i32);
        assert_eq!(Step::from_id(20).map(Step::name), Some("not dumpable"));
    }

    #[test]
    fn messages_parse() {
        let mut bytes = Vec::new();
        for m in [
            [TAG_CG_LOST, 3, 0],
            [TAG_SETUP, Step::Seccomp as i32, 1],
            [TAG_EXEC, 13, 0],
            [TAG_EXIT, 0x7f00, 0],
            [99, 0, 0],
        ] {
            for w in m {
                bytes.extend_from_slice(&w.to_ne_bytes());
            }
        }
        bytes.push(1); // a torn message is ignored
        assert_eq!(
            Report::parse_all(&bytes),
            [
                Report::CgLost { bits: 3 },
                Report::Setup {
                    step: Some(Step::Seccomp),
                    errno: 1
                },
                Report::Exec { errno: 13 },
                Report::Exit { status: 0x7f00 },
            ]
        );
    }
}
