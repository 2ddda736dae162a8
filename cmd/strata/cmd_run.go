package main

import (
	"context"
	"log/slog"
	"path/filepath"

	"github.com/strata-hsm/strata/cmd/internal/sdnotify"
	"github.com/strata-hsm/strata/events"
)

type runCmd struct {
	Config  string   `placeholder:"FILE" complete:"file" help:"TOML configuration file (see strata.example.toml); flags override it."`
	Hot     []string `sep:"none" placeholder:"DIR" complete:"dir" help:"A hot tree to manage (repeatable)."`
	Cold    string   `placeholder:"DIR" complete:"dir" help:"Directory used as the cold tier (default DATA/cold)."`
	Host    string   `placeholder:"NAME" help:"This host's name in event subjects (default: the hostname)."`
	Port    int      `placeholder:"N" help:"NATS client port on 127.0.0.1 for the CLI and subscribers (default 4250; -1: none)."`
	Metrics string   `placeholder:"ADDR" help:"Serve metrics, /healthz, /readyz and the status page on ADDR (host:port; default 127.0.0.1:9750; off: none)."`
	LogJSON bool     `name:"log-json" help:"Log as JSON lines."`
	Debug   bool     `help:"Log debug messages."`
}

func (*runCmd) Example() string { return "strata run --hot /srv/projects --cold /mnt/archive" }

func (c *runCmd) Run(ctx context.Context, g *globals) (err error) {
	// Taken from the environment before anything starts a process that
	// would inherit it (the holder, rclone).
	notify, nerr := sdnotify.FromEnv()
	defer func() {
		if err != nil {
			_ = notify.Notify("STATUS=failed: " + err.Error())
		}
	}()
	cfg, err := runConfig(c.Config, g.dataDir(), g.Data != "", c.Hot, c.Cold, c.Host, c.Port, c.Metrics)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if c.Debug {
		level = slog.LevelDebug
	}
	logger := newLogger(c.LogJSON, level)
	if nerr != nil {
		logger.Warn("not telling systemd how the daemon starts", "err", nerr)
	}
	d, err := startDaemon(ctx, cfg, logger)
	if err != nil {
		return err
	}
	d.notify = notify
	defer func() {
		d.notifyStopping()
		logger.Info("strata stopping")
		d.close()
		logger.Info("strata stopped")
	}()
	return d.run(ctx)
}

// runConfig merges the config file (if any), flags and defaults, and
// validates the result. dataSet says --data was given: it overrides the
// file's data_dir, while the default (STRATA_DATA or /var/lib/strata) does
// not.
func runConfig(configPath, data string, dataSet bool, hot []string, cold, host string, port int, metricsAddr string) (Config, error) {
	var cfg Config
	if configPath != "" {
		var err error
		if cfg, err = LoadConfig(configPath); err != nil {
			return Config{}, err
		}
	}
	if dataSet || cfg.DataDir == "" {
		cfg.DataDir = data
	}
	abs, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return Config{}, err
	}
	cfg.DataDir = abs
	for _, h := range hot {
		p, err := filepath.Abs(h)
		if err != nil {
			return Config{}, err
		}
		cfg.Hot = append(cfg.Hot, HotConfig{Path: p})
	}
	if cold != "" {
		p, err := filepath.Abs(cold)
		if err != nil {
			return Config{}, err
		}
		cfg.Tiers = []TierConfig{{Name: "cold", Kind: events.TierDirectory, Path: p}}
	}
	if host != "" {
		cfg.Host = host
	}
	if port != 0 {
		cfg.NATS.Port = port
	}
	if metricsAddr != "" {
		cfg.Metrics.Listen = metricsAddr
	}
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}
