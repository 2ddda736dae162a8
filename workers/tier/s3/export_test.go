package s3

import (
	"context"

	"github.com/strata-hsm/strata/workers/tier"
)

// UploadOnly is Put's upload without the read-back, for benchmarks.
func (t *Target) UploadOnly(ctx context.Context, o tier.Object) error { return t.upload(ctx, o) }
