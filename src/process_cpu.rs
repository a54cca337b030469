//! The process metrics of the prometheus crate, with `process_cpu_seconds_total` as seconds
//! with fractions: the crate exports it as an integer counter, so a `rate()` over it draws
//! steps of whole seconds. The other `process_*` metrics are the crate's, unchanged.

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::{proto, Counter, Opts};

const CPU: &str = "process_cpu_seconds_total";

/// The crate's process collector with the CPU counter replaced.
pub(crate) struct ProcessMetrics {
    inner: ProcessCollector,
    cpu: Counter,
    /// Serializes scrapes, so two at once never add the same CPU time twice.
    last: std::sync::Mutex<()>,
}

impl ProcessMetrics {
    /// This process's metrics.
    pub(crate) fn for_self() -> Option<Self> {
        let cpu = Counter::with_opts(Opts::new(CPU, "Total user and system CPU time spent in seconds.")).ok()?;
        Some(ProcessMetrics { inner: ProcessCollector::for_self(), cpu, last: std::sync::Mutex::new(()) })
    }
}

/// User plus system CPU time of this process, in seconds (clock-tick resolution, 10 ms).
fn cpu_seconds() -> Option<f64> {
    let stat = procfs::process::Process::myself().ok()?.stat().ok()?;
    let ticks = procfs::ticks_per_second();
    (ticks > 0).then(|| (stat.utime + stat.stime) as f64 / ticks as f64)
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        let theirs = self.inner.desc().into_iter().filter(|d| d.fq_name != CPU);
        theirs.chain(self.cpu.desc()).collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let mut families: Vec<_> = self.inner.collect().into_iter().filter(|f| f.name() != CPU).collect();
        let _guard = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(now) = cpu_seconds() {
            let grown = now - self.cpu.get();
            if grown > 0.0 {
                self.cpu.inc_by(grown);
            }
        }
        families.extend(self.cpu.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counter is a counter, once, and holds fractions of a second: the crate's integer
    /// counter never does, ours does within a few scrapes a little CPU time apart.
    #[test]
    fn cpu_seconds_have_fractions() {
        let registry = prometheus::Registry::new();
        registry.register(Box::new(ProcessMetrics::for_self().unwrap())).unwrap();
        let mut fractions = false;
        let mut families = Vec::new();
        for _ in 0..20 {
            // Burn a little CPU (a few clock ticks) between scrapes.
            let mut x = 0u64;
            for _ in 0..2_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            families = registry.gather();
            let cpu: Vec<_> = families.iter().filter(|f| f.name() == CPU).collect();
            assert_eq!(cpu.len(), 1);
            assert_eq!(cpu[0].get_field_type(), proto::MetricType::COUNTER);
            let v = cpu[0].get_metric()[0].get_counter().get_value();
            assert!(v > 0.0, "{v}");
            if v.fract() != 0.0 {
                fractions = true;
                break;
            }
        }
        assert!(fractions, "process_cpu_seconds_total never had a fraction");
        assert!(families.iter().any(|f| f.name() == "process_resident_memory_bytes"));
    }
}
