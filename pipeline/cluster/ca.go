package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/strata-hsm/strata/events"
)

// Files of a CA directory (Init) and of a host's bundle (Add).
const (
	CAFile      = "ca.pem"     // the CA certificate (in both)
	CAKeyFile   = "ca-key.pem" // the CA's private key (CA directory only)
	CertFile    = "host.pem"   // the host's certificate (bundle)
	KeyFile     = "host-key.pem"
	ClusterFile = "cluster.json" // Info (in both)
	HostsDir    = "hosts"        // where Add writes bundles by default: <ca dir>/hosts/<host>
)

// Validity of what Init and Add make.
const (
	CAValidity   = 20 * 365 * 24 * time.Hour
	CertValidity = 5 * 365 * 24 * time.Hour
)

// Errors.
var (
	// ErrExists: Init found a CA in the directory already (it never
	// overwrites one: every host's certificate depends on it).
	ErrExists = errors.New("cluster: a CA exists there already")
	// ErrNoCA: the directory has no CA (run strata cluster init).
	ErrNoCA = errors.New("cluster: no CA in the directory")
)

// Info is cluster.json: what every host of one cluster shares besides the
// CA. OwnerToken marks the daemons' durable consumers (pipeline's owner
// token): one token for the whole cluster, so no host takes another
// host's stage durables for strays.
type Info struct {
	Name       string `json:"name"`
	OwnerToken string `json:"owner_token"`
	// Host is the host a bundle was issued for ("" in the CA directory).
	Host string `json:"host,omitempty"`
}

// Init creates a cluster's CA in dir (created 0700): an ECDSA P-256 key
// (0600) and a self-signed CA certificate, and cluster.json with name and
// a new owner token. A directory that holds a CA already is refused
// (ErrExists).
func Init(dir, name string) (Info, error) {
	if !events.ValidToken(name) {
		return Info{}, fmt.Errorf("cluster name %q: want letters, digits, '-' or '_' (at most 64)", name)
	}
	if _, err := os.Stat(filepath.Join(dir, CAKeyFile)); err == nil {
		return Info{}, fmt.Errorf("%w: %s (each host's certificate depends on it; use another directory for a new cluster)", ErrExists, dir)
	}
	if err := mkdirPrivate(dir); err != nil {
		return Info{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Info{}, fmt.Errorf("cluster init: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Strata cluster " + name + " CA", Organization: []string{"Strata"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return Info{}, fmt.Errorf("cluster init: %w", err)
	}
	info := Info{Name: name, OwnerToken: secret()}
	if err := writeKey(filepath.Join(dir, CAKeyFile), key); err != nil {
		return Info{}, err
	}
	if err := writePEM(filepath.Join(dir, CAFile), "CERTIFICATE", der); err != nil {
		return Info{}, err
	}
	if err := writeJSON(filepath.Join(dir, ClusterFile), info); err != nil {
		return Info{}, err
	}
	return info, nil
}

// AddOptions say what a host's certificate names besides the host itself.
type AddOptions struct {
	// IPs and DNS are the addresses other hosts and clients reach this
	// host by (routes and client URLs are checked against them).
	// 127.0.0.1, ::1 and localhost are always included.
	IPs []net.IP
	DNS []string
	// Out is the bundle directory (default <ca dir>/hosts/<host>).
	Out string
}

// Add issues host's certificate and key, signed by the CA in caDir, and
// writes its bundle: ca.pem, host.pem, host-key.pem and cluster.json
// (with the host's name), files 0600 in a directory 0700. It returns the
// bundle's directory. A host added again gets a new certificate (the old
// one stays valid until it expires).
func Add(caDir, host string, opts AddOptions) (string, error) {
	if !events.ValidToken(host) {
		return "", fmt.Errorf("host %q: want letters, digits, '-' or '_' (at most 64), as the host key of its strata.toml", host)
	}
	ca, caKey, info, err := loadCA(caDir)
	if err != nil {
		return "", err
	}
	out := opts.Out
	if out == "" {
		out = filepath.Join(caDir, HostsDir, host)
		if err := mkdirPrivate(filepath.Dir(out)); err != nil {
			return "", err
		}
	} else if err := os.MkdirAll(filepath.Dir(out), 0o700); err != nil {
		// Only the bundle directory is made private: the parent of --out
		// (a removable disk's mount point, /etc/strata) keeps its mode.
		return "", fmt.Errorf("create %s: %w", filepath.Dir(out), err)
	}
	if err := mkdirPrivate(out); err != nil {
		return "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("cluster add: %w", err)
	}
	dns := append([]string{host, "localhost"}, opts.DNS...)
	ips := append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, opts.IPs...)
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: host, Organization: []string{"Strata cluster " + info.Name}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(CertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// Both: a host is a server to the routes and clients that dial
		// it, and a client of the routes it dials.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    slices.Compact(dns),
		IPAddresses: ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return "", fmt.Errorf("cluster add: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(caDir, CAFile))
	if err != nil {
		return "", fmt.Errorf("cluster add: %w", err)
	}
	if err := writeFile(filepath.Join(out, CAFile), caPEM); err != nil {
		return "", err
	}
	if err := writeKey(filepath.Join(out, KeyFile), key); err != nil {
		return "", err
	}
	if err := writePEM(filepath.Join(out, CertFile), "CERTIFICATE", der); err != nil {
		return "", err
	}
	info.Host = host
	if err := writeJSON(filepath.Join(out, ClusterFile), info); err != nil {
		return "", err
	}
	return out, nil
}

// loadCA reads the CA certificate, key and cluster.json of dir.
func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, Info, error) {
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, Info{}, fmt.Errorf("%w %s (create one with: strata cluster init --dir %s)", ErrNoCA, dir, dir)
	}
	if err != nil {
		return nil, nil, Info{}, fmt.Errorf("read CA key: %w", err)
	}
	kb, _ := pem.Decode(keyPEM)
	if kb == nil {
		return nil, nil, Info{}, fmt.Errorf("CA key %s: not PEM", filepath.Join(dir, CAKeyFile))
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, Info{}, fmt.Errorf("CA key %s: %w", filepath.Join(dir, CAKeyFile), err)
	}
	cert, err := readCert(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, nil, Info{}, err
	}
	info, err := ReadInfo(dir)
	if err != nil {
		return nil, nil, Info{}, err
	}
	return cert, key, info, nil
}

// ReadInfo reads dir/cluster.json.
func ReadInfo(dir string) (Info, error) {
	p := filepath.Join(dir, ClusterFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return Info{}, fmt.Errorf("read %s: %w", p, err)
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil {
		return Info{}, fmt.Errorf("%s is corrupt: %w", p, err)
	}
	if info.Name == "" || info.OwnerToken == "" {
		return Info{}, fmt.Errorf("%s is incomplete (name and owner_token are required): copy it again from the CA directory", p)
	}
	return info, nil
}

func readCert(p string) (*x509.Certificate, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read certificate: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("certificate %s: not a PEM certificate", p)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", p, err)
	}
	return c, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

func secret() string {
	b := make([]byte, 16)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func mkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	// MkdirAll leaves an existing directory's mode, and the umask may
	// have narrowed a new one: it holds keys, so 0700 exactly.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("chmod %s: %w", dir, err)
	}
	return nil
}

func writeKey(p string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	return writePEM(p, "EC PRIVATE KEY", der)
}

func writePEM(p, typ string, der []byte) error {
	return writeFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
}

func writeJSON(p string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(p, append(b, '\n'))
}

// writeFile writes b to p atomically, mode 0600 whatever the umask.
func writeFile(p string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", p, err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("write %s: %w", p, err)
	}
	return nil
}
