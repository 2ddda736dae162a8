package tier

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"

	"github.com/zeebo/blake3"
)

// ProbeError says which step of WriteProbe failed.
type ProbeError struct {
	Step string // "write", "read back", "delete"
	Err  error
}

func (e *ProbeError) Error() string { return e.Step + " a probe object: " + e.Err.Error() }
func (e *ProbeError) Unwrap() error { return e.Err }

// WriteProbe writes a small probe object to t, reads it back and deletes
// it: a target that answers but cannot be written (read-only credentials,
// a full or read-only disk, a missing bucket) fails here, with a
// *ProbeError naming the step. The probe's id is random, so it names no
// real object; a crash between the write and the delete leaves one small
// object no file refers to (prune removes it). Do not call it on tape: a
// probe would cost a bundle on the medium.
func WriteProbe(ctx context.Context, t Target) error {
	var raw [32]byte
	rand.Read(raw[:])
	body := []byte("strata write probe " + hex.EncodeToString(raw[:]) + "\n")
	sum := blake3.Sum256(body)
	o := Object{
		ID: hex.EncodeToString(raw[:]), PackedSize: int64(len(body)), PackedSum: hex.EncodeToString(sum[:]),
		Manifest: []byte(`{"probe":true}`),
		Open:     func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil },
	}
	if _, err := t.Put(ctx, o); err != nil {
		return &ProbeError{"write", err}
	}
	readErr := readProbe(ctx, t, o.ID, body)
	delErr := t.Delete(context.WithoutCancel(ctx), o.ID)
	switch {
	case readErr != nil:
		return &ProbeError{"read back", readErr}
	case delErr != nil:
		return &ProbeError{"delete", delErr}
	}
	return nil
}

func readProbe(ctx context.Context, t Target, id string, want []byte) error {
	rc, err := t.GetRange(ctx, id, 0, int64(len(want)))
	if err != nil {
		return err
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%w: %d bytes read differ from the %d written", ErrCorrupt, len(got), len(want))
	}
	return nil
}
