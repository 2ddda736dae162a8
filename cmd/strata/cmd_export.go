package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/strata-hsm/strata/projections/catalog"
	"github.com/strata-hsm/strata/projections/export"
)

type exportRequest struct {
	Dir string `json:"dir"`
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
	return exportTo(ctx, d.cat, req.Dir)
}

func exportTo(ctx context.Context, cat *catalog.Catalog, dir string) (exportReply, error) {
	res, err := export.Parquet(ctx, cat, dir)
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
	if daemonRunning(ctx, dataDir) {
		if err := request(ctx, dataDir, "export", exportRequest{Dir: out}, &rep, time.Hour); err != nil {
			return err
		}
	} else {
		cat, err := catalog.Open(catalogDir(dataDir), catalog.Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			return err
		}
		defer cat.Close()
		if rep, err = exportTo(ctx, cat, out); err != nil {
			return err
		}
	}
	if c.JSON {
		return printJSON(e, rep)
	}
	fmt.Fprintf(e.stdout, "exported the catalog at seq %d: %s (%d rows) and %s (%d rows)\n",
		rep.Seq, rep.Paths[0], rep.Files, rep.Paths[1], rep.Copies)
	return nil
}
