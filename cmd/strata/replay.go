package main

import (
	"context"
)

// verifyReply is the result of `strata replay --verify`.
type verifyReply struct {
	Seq  uint64 `json:"seq"`
	Diff string `json:"diff,omitempty"`
}

// ctlVerify rebuilds the catalog beside the live one (its projection
// paused) and compares.
func (d *daemon) ctlVerify(ctx context.Context, _ []byte) (any, error) {
	seq, diff, err := d.cat.Verify(ctx, d.js, d.cfg.DataDir, nil)
	if err != nil {
		return nil, err
	}
	return verifyReply{Seq: seq, Diff: diff}, nil
}
