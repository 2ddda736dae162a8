// Package cluster turns Strata's [cluster] configuration into the
// embedded NATS server's cluster and TLS options, and issues what each
// host needs to join: a CA (Init) and per-host certificates and bundles
// (Add), with crypto/x509 from the standard library.
//
// # What is protected
//
// Every route between hosts is TLS 1.2+ with certificates verified both
// ways against the cluster's CA: a server with a certificate from another
// CA, or none, is refused, whichever side dials. A TLS client listener
// (Options.ClientTLS) asks the same of clients: a certificate from the
// cluster's CA, and then a user's password as on loopback. In-process
// connections (the daemon's own) never use TLS.
//
// # Bundle
//
// `strata cluster add HOST` writes DIR/hosts/HOST/: ca.pem, host.pem,
// host-key.pem and cluster.json (the cluster's name and owner token, and
// the host). Files are 0600, directories 0700. The host's strata.toml
// names the bundle in [cluster] bundle.
//
// Only pipeline imports this package (for Apply) besides cmd/strata (for
// Init and Add).
package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// Config is the [cluster] section of strata.toml.
type Config struct {
	// Name is the NATS cluster's name (default: the bundle's).
	Name string `toml:"name"`
	// Listen is host:port of the route listener; "" means no cluster
	// (a bundle alone only gives the client listener its TLS).
	Listen string `toml:"listen"`
	// Routes are the other hosts' route URLs (nats://host:port); a route
	// to this host itself is ignored, so every host may list them all.
	Routes []string `toml:"routes"`
	// Bundle is the directory `strata cluster add` wrote for this host.
	Bundle string `toml:"bundle"`
}

// Enabled reports whether the host joins a cluster.
func (c *Config) Enabled() bool { return c != nil && c.Listen != "" }

// FieldError names the bad key of a Config (cluster.listen, …).
type FieldError struct {
	Field string
	Value any
	Err   error
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s = %v: %v", e.Field, e.Value, e.Err) }
func (e *FieldError) Unwrap() error { return e.Err }

// Validate checks c without reading files.
func (c *Config) Validate() error {
	if c.Listen == "" && len(c.Routes) > 0 {
		return &FieldError{"cluster.listen", c.Listen, errors.New("required with routes (host:port the other hosts dial)")}
	}
	if c.Listen != "" {
		if _, _, err := splitHostPort(c.Listen); err != nil {
			return &FieldError{"cluster.listen", c.Listen, err}
		}
		if c.Bundle == "" {
			return &FieldError{"cluster.bundle", c.Bundle, errors.New("required: routes carry the event log and are TLS only; make one with strata cluster init, then strata cluster add HOST")}
		}
	}
	if c.Bundle != "" && !filepath.IsAbs(c.Bundle) {
		return &FieldError{"cluster.bundle", c.Bundle, errors.New("want an absolute path")}
	}
	if c.Name != "" && !validName(c.Name) {
		return &FieldError{"cluster.name", c.Name, errors.New("want letters, digits, '-' or '_'")}
	}
	for i, r := range c.Routes {
		if _, err := routeURL(r); err != nil {
			return &FieldError{fmt.Sprintf("cluster.routes[%d]", i), r, err}
		}
	}
	return nil
}

func validName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, fmt.Errorf("want host:port: %w", err)
	}
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("port %q: want 1-65535", p)
	}
	if net.ParseIP(h) == nil && h != "localhost" && h != "" {
		return "", 0, fmt.Errorf("host %q: want an IP address", h)
	}
	return h, n, nil
}

func routeURL(r string) (string, error) {
	rest, ok := strings.CutPrefix(r, "nats://")
	if !ok {
		rest, ok = strings.CutPrefix(r, "tls://")
	}
	if !ok {
		return "", errors.New("want nats://host:port (routes are always TLS)")
	}
	if _, _, err := net.SplitHostPort(rest); err != nil {
		return "", fmt.Errorf("want nats://host:port: %w", err)
	}
	return "nats://" + rest, nil
}

// Bundle is a host's loaded bundle.
type Bundle struct {
	Dir  string
	Info Info
	// TLS verifies peers against the cluster's CA both ways and presents
	// the host's certificate: for routes, and for a TLS client listener.
	TLS *tls.Config
}

// Files are the paths of the bundle's CA, certificate and key (a local
// client presents them to a TLS client listener).
func (b *Bundle) Files() (ca, cert, key string) {
	return filepath.Join(b.Dir, CAFile), filepath.Join(b.Dir, CertFile), filepath.Join(b.Dir, KeyFile)
}

// LoadBundle reads the bundle in dir for host. A bundle issued for another
// host, or files others may read, are refused.
func LoadBundle(dir, host string) (*Bundle, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("cluster bundle %s: %w (make it with strata cluster add %s on the CA's host and copy it here)", dir, err, host)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("cluster bundle %s is open to other users (mode %04o): run chmod 700 %s (it holds the host's private key)", dir, fi.Mode().Perm(), dir)
	}
	info, err := ReadInfo(dir)
	if err != nil {
		return nil, err
	}
	if info.Host != host {
		return nil, fmt.Errorf("cluster bundle %s was issued for host %q, this host is %q: run strata cluster add %s", dir, info.Host, host, host)
	}
	b := &Bundle{Dir: dir, Info: info}
	caFile, certFile, keyFile := b.Files()
	if kfi, err := os.Stat(keyFile); err == nil && kfi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key %s is open to other users (mode %04o): run chmod 600 %s", keyFile, kfi.Mode().Perm(), keyFile)
	}
	if b.TLS, err = TLSConfig(caFile, certFile, keyFile); err != nil {
		return nil, err
	}
	return b, nil
}

// TLSConfig builds a mutual-TLS configuration from PEM files: the
// certificate and key presented, and the CA peers must be signed by.
func TLSConfig(caFile, certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load certificate %s: %w", certFile, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA %s: %w", caFile, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("CA %s: no PEM certificate", caFile)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		RootCAs:      pool, // a route's dialer checks the server it dials too
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}

// TLSTimeout bounds a TLS handshake, in seconds.
const TLSTimeout = 5

// Apply sets the cluster options of opts: routes listen on c.Listen and
// dial c.Routes, all with b's mutual TLS. c must be Enabled.
func Apply(opts *server.Options, c *Config, b *Bundle) error {
	h, p, err := splitHostPort(c.Listen)
	if err != nil {
		return &FieldError{"cluster.listen", c.Listen, err}
	}
	name := c.Name
	if name == "" {
		name = b.Info.Name
	}
	opts.Cluster = server.ClusterOpts{
		Name:       name,
		Host:       h,
		Port:       p,
		TLSConfig:  b.TLS.Clone(),
		TLSTimeout: TLSTimeout,
	}
	var urls []string
	for _, r := range c.Routes {
		u, err := routeURL(r)
		if err != nil {
			return err
		}
		urls = append(urls, u)
	}
	if len(urls) > 0 {
		opts.Routes = server.RoutesFromStr(strings.Join(urls, ","))
	}
	return nil
}

// ApplyClientTLS makes the client listener of opts TLS with client
// certificates from b's CA.
func ApplyClientTLS(opts *server.Options, b *Bundle) {
	opts.TLS = true
	opts.TLSVerify = true
	opts.TLSConfig = b.TLS.Clone()
	opts.TLSTimeout = TLSTimeout
}
