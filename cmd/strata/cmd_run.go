package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/strata-hsm/strata/events"
)

// multiFlag collects a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func cmdRun(ctx context.Context, e *env, args []string) error {
	fs := newFlags("run", "strata run [--config FILE] [--data DIR] [--hot DIR]... [--cold DIR]",
		"strata run --hot /srv/projects --cold /mnt/archive")
	configPath := fs.String("config", "", "TOML configuration file (see strata.example.toml); flags override it")
	data := dataDirFlag(fs)
	var hot multiFlag
	fs.Var(&hot, "hot", "a hot tree to manage (repeatable)")
	cold := fs.String("cold", "", "directory used as the cold tier (default DATA/cold)")
	host := fs.String("host", "", "this host's name in event subjects (default: the hostname)")
	port := fs.Int("port", 0, "NATS client port on 127.0.0.1 for the CLI and subscribers (default 4250; -1: none)")
	logJSON := fs.Bool("log-json", false, "log as JSON lines")
	debug := fs.Bool("debug", false, "log debug messages")
	if err := parse(fs, args, e); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: run takes no arguments, got %q", errUsage, fs.Args())
	}
	cfg, err := runConfig(fs, *configPath, *data, hot, *cold, *host, *port)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	logger := newLogger(*logJSON, level)
	d, err := startDaemon(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer func() {
		logger.Info("strata stopping")
		d.close()
		logger.Info("strata stopped")
	}()
	return d.run(ctx)
}

// runConfig merges the config file (if any), flags and defaults, and
// validates the result.
func runConfig(fs *flag.FlagSet, configPath, data string, hot []string, cold, host string, port int) (Config, error) {
	var cfg Config
	if configPath != "" {
		var err error
		if cfg, err = LoadConfig(configPath); err != nil {
			return Config{}, err
		}
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["data"] || cfg.DataDir == "" {
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
	cfg.EnsureDefaults()
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}
