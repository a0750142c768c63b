//! Process figures from /proc, the open-files limit, and progress output.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// RSS and CPU time of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub rss_kib: u64,
    pub cpu_s: f64,
    pub threads: u64,
    /// Busy CPU time of the whole machine (all processes), from /proc/stat.
    pub machine_busy_s: f64,
}

/// Busy CPU seconds of the whole machine since boot (user, nice, system, irq, softirq, steal).
pub fn machine_busy_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    busy / ticks
}

/// Samples `/proc/<pid>` (`"self"` for this process). None if the process is gone.
pub fn sample(pid: &str) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut s = ProcSample::default();
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            s.rss_kib = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Threads:") {
            s.threads = v.trim().parse().unwrap_or(0);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    s.cpu_s = (utime + stime) / ticks;
    s.machine_busy_s = machine_busy_s();
    Some(s)
}

/// Raises the soft open-files limit to the hard limit; returns the limit in force.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// A progress bar on a terminal, a plain line every few seconds otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    last_line: Instant,
    enabled: bool,
}

impl Progress {
    pub fn new(label: &str, total: u64, enabled: bool) -> Self {
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>10} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
                )
                .expect("template"),
            );
            bar.set_prefix(label.to_string());
            bar
        });
        if bar.is_none() && enabled {
            eprintln!("loadgen: {label}: started ({total})");
        }
        Progress {
            bar,
            label: label.to_string(),
            last_line: Instant::now(),
            enabled,
        }
    }

    pub fn update(&mut self, pos: u64, msg: impl FnOnce() -> String) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(pos);
                bar.set_message(msg());
            }
            None => {
                if self.enabled && self.last_line.elapsed() >= Duration::from_secs(2) {
                    self.last_line = Instant::now();
                    eprintln!("loadgen: {}: {pos} {}", self.label, msg());
                }
            }
        }
    }

    pub fn finish(self, msg: String) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
        if self.enabled {
            eprintln!("loadgen: {}: {msg}", self.label);
        }
    }
}
