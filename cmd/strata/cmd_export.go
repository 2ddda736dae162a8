package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/strata-hsm/strata/cmd/internal/progress"
	"github.com/strata-hsm/strata/pipeline"
	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/projections/export"
)

type exportRequest struct {
	Dir string `json:"dir"`
	// Progress, if set, is a subject under the CLI's inbox prefix that
	// the daemon publishes export.Progress messages to (at most twice a
	// second) while it exports.
	Progress string `json:"progress,omitempty"`
}

type exportReply struct {
	Dir    string   `json:"dir"`
	Seq    uint64   `json:"seq"`
	Files  int      `json:"file_rows"`
	Copies int      `json:"copy_rows"`
	Paths  []string `json:"paths"`
}

func (d *daemon) ctlExport(ctx context.Context, raw []byte) (any, error) {
	var req exportRequest
	if err := json.Unmarshal(raw, &req); err != nil || !filepath.IsAbs(req.Dir) {
		return nil, fmt.Errorf("export: want an absolute directory")
	}
	var report func(export.Progress)
	// Only to a CLI's inbox: the daemon's connection may publish
	// anywhere, events included.
	if strings.HasPrefix(req.Progress, pipeline.CLIInboxPrefix+".") {
		var last time.Time
		report = func(p export.Progress) {
			if now := time.Now(); now.Sub(last) >= 500*time.Millisecond || p.Step != "reading the catalog" {
				last = now
				if b, err := json.Marshal(p); err == nil {
					_ = d.nc.Publish(req.Progress, b) // progress is best effort
				}
			}
		}
	}
	return exportTo(ctx, d.cat, req.Dir, report)
}

func exportTo(ctx context.Context, cat *catalog.Catalog, dir string, report func(export.Progress)) (exportReply, error) {
	res, err := export.ParquetWith(ctx, cat, dir, export.Options{Progress: report})
	if err != nil {
		return exportReply{}, err
	}
	return exportReply{Dir: dir, Seq: res.Seq, Files: res.Files, Copies: res.Copies,
		Paths: []string{filepath.Join(dir, "files.parquet"), filepath.Join(dir, "copies.parquet")}}, nil
}

type exportCmd struct {
	Parquet string `required:"" placeholder:"DIR" complete:"dir" help:"Directory to write files.parquet and copies.parquet into."`
	JSON    bool   `name:"json" help:"Print JSON."`
}

func (*exportCmd) Example() string {
	return "strata export --parquet /tmp/catalog && duckdb -c \"SELECT state, count(*) FROM '/tmp/catalog/files.parquet' GROUP BY ALL\""
}

func (c *exportCmd) Run(ctx context.Context, e *env, g *globals) error {
	out, err := filepath.Abs(c.Parquet)
	if err != nil {
		return err
	}
	dataDir, err := filepath.Abs(g.dataDir())
	if err != nil {
		return err
	}
	var rep exportReply
	prog := progress.New(e.stderr, "export", "rows", 0)
	show := func(p export.Progress) { prog.Set(p.Rows, 0, p.Step) }
	if daemonRunning(ctx, dataDir) {
		err = exportByDaemon(ctx, dataDir, out, show, &rep)
	} else {
		var cat *catalog.Catalog
		if cat, err = catalog.Open(catalogDir(dataDir), catalog.Options{Logger: slog.New(slog.DiscardHandler)}); err == nil {
			rep, err = exportTo(ctx, cat, out, show)
			cat.Close()
		}
	}
	prog.Finish()
	if err != nil {
		return err
	}
	if c.JSON {
		return printJSON(e, rep)
	}
	fmt.Fprintf(e.stdout, "exported the catalog at seq %d: %s (%d rows) and %s (%d rows)\n",
		rep.Seq, rep.Paths[0], rep.Files, rep.Paths[1], rep.Copies)
	return nil
}

// exportByDaemon asks the running daemon to export into out, showing the
// progress it publishes to an inbox of this connection.
func exportByDaemon(ctx context.Context, dataDir, out string, show func(export.Progress), rep *exportReply) error {
	nc, err := pipeline.Dial(ctx, dataDir)
	if err != nil {
		return err
	}
	defer nc.Close()
	inbox := nc.NewInbox()
	sub, err := nc.Subscribe(inbox, func(m *nats.Msg) {
		var p export.Progress
		if json.Unmarshal(m.Data, &p) == nil {
			show(p)
		}
	})
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	return requestOn(ctx, nc, dataDir, "export", exportRequest{Dir: out, Progress: inbox}, rep, time.Hour)
}
