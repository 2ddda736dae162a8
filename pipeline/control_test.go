package pipeline_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/pipeline/pipelinetest"
)

func TestControl(t *testing.T) {
	srv := pipelinetest.RunServer(t)
	nc := srv.Conn()
	type req struct {
		N int `json:"n"`
	}
	stop, err := pipeline.ServeControl(context.Background(), nc, "test", map[string]pipeline.ControlHandler{
		"double": pipeline.Verb("double", func(_ context.Context, r req) (any, error) { return r.N * 2, nil }),
		"fail":   func(context.Context, []byte) (any, error) { return nil, errors.New("fail: no") },
	}, pipelinetest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got int
	if err := pipeline.Request(ctx, nc, "test", "double", req{21}, &got); err != nil || got != 42 {
		t.Fatalf("double: %d, %v", got, err)
	}
	if err := pipeline.Request(ctx, nc, "test", "fail", nil, nil); err == nil || err.Error() != "fail: no" {
		t.Fatalf("fail: %v; want the handler's error", err)
	}
	if err := pipeline.Request(ctx, nc, "test", "double", "not an object", &got); err == nil || !strings.Contains(err.Error(), "double: bad request") {
		t.Fatalf("bad body: %v", err)
	}
	stop()
	if err := pipeline.Request(ctx, nc, "test", "double", req{1}, &got); err == nil || !strings.Contains(err.Error(), "not answering") {
		t.Fatalf("after stop: %v; want no responders", err)
	}
}
