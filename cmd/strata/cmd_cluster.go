package main

import (
	"context"
	"fmt"
	"net"

	"github.com/strata-hsm/strata/pipeline/cluster"
)

type clusterCmds struct {
	Init clusterInitCmd `cmd:"" help:"Create a cluster's CA (ECDSA P-256) and owner token in a private directory."`
	Add  clusterAddCmd  `cmd:"" help:"Issue a host's certificate, key and bundle (files 0600, directory 0700)."`
}

func (*clusterCmds) Example() string {
	return "strata cluster init --dir /root/strata-ca --name strata\nstrata cluster add nas2 --dir /root/strata-ca --ip 10.0.0.2"
}

type clusterInitCmd struct {
	Dir  string `required:"" type:"path" help:"Directory of the CA (created 0700; keep it private)."`
	Name string `default:"strata" help:"The cluster's name."`
}

func (*clusterInitCmd) Example() string {
	return "strata cluster init --dir /root/strata-ca --name strata"
}

func (c *clusterInitCmd) Run(_ context.Context, e *env, _ *globals) error {
	info, err := cluster.Init(c.Dir, c.Name)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "cluster %s: CA in %s; next: strata cluster add HOST --dir %s\n", info.Name, c.Dir, c.Dir)
	return nil
}

type clusterAddCmd struct {
	Host string   `arg:"" help:"The host's name (the host key of its strata.toml)."`
	Dir  string   `required:"" type:"path" help:"Directory of the CA (strata cluster init)."`
	IP   []string `name:"ip" help:"IP addresses the other hosts reach it by (127.0.0.1 and ::1 are always included)."`
	DNS  []string `name:"dns" help:"DNS names the other hosts reach it by (the host name and localhost are always included)."`
	Out  string   `type:"path" help:"Bundle directory (default DIR/hosts/HOST; made 0700, its parent is left as it is)."`
}

func (*clusterAddCmd) Example() string {
	return "strata cluster add nas2 --dir /root/strata-ca --ip 10.0.0.2\n" +
		"strata cluster add nas3 --dir /root/strata-ca --ip 10.0.0.3 --dns nas3.example.net --out /mnt/usb/nas3"
}

func (c *clusterAddCmd) Run(_ context.Context, e *env, _ *globals) error {
	opts := cluster.AddOptions{DNS: c.DNS, Out: c.Out}
	for _, s := range c.IP {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--ip %q: not an IP address", s)
		}
		opts.IPs = append(opts.IPs, ip)
	}
	out, err := cluster.Add(c.Dir, c.Host, opts)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "bundle of %s in %s: copy it to the host (e.g. /etc/strata/cluster) and set [cluster] bundle there\n", c.Host, out)
	return nil
}
