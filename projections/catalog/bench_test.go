package catalog

import (
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/strata-hsm/strata/events"
	"github.com/strata-hsm/strata/projections/catalog/catalogtest"
)

var benchEnvs = sync.OnceValue(func() []events.Envelope {
	return catalogtest.Generate(1_000_000, 7, catalogtest.Options{Invalid: 0.001})
})

// BenchmarkReplay applies 1M mixed events to a fresh catalog in batches of
// 1000 (a stream fetch) and reports events/s, including the final Close
// (which flushes the memtable).
func BenchmarkReplay(b *testing.B) {
	envs := benchEnvs()
	for _, mem := range []uint64{64 << 20} {
		batch := 1000
		b.Run("batch="+itoa(batch)+"/memtable="+itoa(int(mem>>20))+"MiB", func(b *testing.B) {
			var total time.Duration
			cpu0 := cpuTime()
			for b.Loop() {
				dir := b.TempDir()
				start := time.Now()
				c, err := Open(dir, Options{MemTableBytes: mem})
				if err != nil {
					b.Fatal(err)
				}
				for lo := 0; lo < len(envs); lo += batch {
					if err := c.Apply(envs[lo:min(lo+batch, len(envs))]); err != nil {
						b.Fatal(err)
					}
				}
				if err := c.Close(); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(len(envs))*float64(b.N)/total.Seconds(), "events/s")
			b.ReportMetric(float64(len(envs))*float64(b.N)/(cpuTime()-cpu0).Seconds(), "events/cpu-s")
		})
	}
}

// BenchmarkDecode measures events.DecodeData alone, on one goroutine.
func BenchmarkDecode(b *testing.B) {
	envs := benchEnvs()[:100_000]
	start := time.Now()
	n := 0
	for b.Loop() {
		for i := range envs {
			events.DecodeData(envs[i].Type, envs[i].Data)
		}
		n += len(envs)
	}
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "events/s")
}

func itoa(n int) string {
	return string(appendInt(nil, n))
}

func appendInt(b []byte, n int) []byte {
	if n >= 10 {
		b = appendInt(b, n/10)
	}
	return append(b, byte('0'+n%10))
}

// cpuTime returns the user+system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
