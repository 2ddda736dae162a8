package recall_test

import (
	"context"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/strata-hsm/strata/workers/object"
	"github.com/strata-hsm/strata/workers/object/objecttest"
	"github.com/strata-hsm/strata/workers/recall"
	"github.com/strata-hsm/strata/workers/tier"
	"github.com/strata-hsm/strata/workers/tier/tiertest"
)

// BenchmarkTTFB measures the time to the first byte of a recall fill: one
// ReadVerified of a 4 MiB frame-aligned range (one frame of the default
// 4 MiB) of a 64 MiB object, from the directory tier and from versitygw S3
// on loopback. "warm" has the manifest cached (every fill after a file's
// first); "cold" fetches the manifest too (a file's first fill). Reports
// the median and p99 in ms.
func BenchmarkTTFB(b *testing.B) {
	data, err := io.ReadAll(objecttest.Reader(64<<20, 1<<20, 77))
	if err != nil {
		b.Fatal(err)
	}
	o := pack(b, data, object.DefaultFrameSize)
	srv := tiertest.StartS3(b)
	hdd, cloud := openDir(b, "hdd"), openS3(b, "cloud", srv)
	o.put(b, hdd)
	o.put(b, cloud)
	for _, tier := range []tier.Target{hdd, cloud} {
		for _, cold := range []bool{false, true} {
			name := tier.Name() + "/warm"
			if cold {
				name = tier.Name() + "/cold"
			}
			b.Run(name, func(b *testing.B) {
				copies := []recall.Copy{{Tier: tier.Name()}}
				r := newReader(b, nil, 0, copies, tier)
				p := make([]byte, 4<<20)
				var times []time.Duration
				i := 0
				for b.Loop() {
					if cold {
						r = newReader(b, nil, 0, copies, tier)
					}
					f := o.m.Frames[i%(len(o.m.Frames)-1)]
					i++
					start := time.Now()
					if _, err := r.ReadVerified(context.Background(), o.stub(), p, f.Offset); err != nil {
						b.Fatal(err)
					}
					times = append(times, time.Since(start))
				}
				slices.Sort(times)
				b.ReportMetric(float64(times[len(times)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(times[len(times)*99/100].Microseconds())/1000, "p99-ms")
				b.SetBytes(int64(len(p)))
			})
		}
	}
}
