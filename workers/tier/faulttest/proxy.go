// Package faulttest is a fault-injecting HTTP proxy for tests: it sits
// between a tier (S3 through minio-go, an rclone webdav remote) and the
// real server on loopback and, per rule, delays requests, answers 500,
// resets connections, cuts bodies short, flips a bit of a request or a
// response body, or hangs. Everything else passes through unchanged.
//
// Only tests import this package.
package faulttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// Fault is what a rule does to a request it matches.
type Fault int

// Faults.
const (
	Latency          Fault = iota + 1 // wait Rule.Delay, then pass the request on
	Error500                          // answer 500 Internal Server Error without passing it on
	Reset                             // close the client's connection with a TCP reset, answering nothing
	TruncateResponse                  // pass on, but cut the response body at Rule.At and drop the connection
	TruncateRequest                   // pass on only the request body up to Rule.At, then drop both connections
	FlipResponse                      // pass on, flipping one bit of the response body at Rule.At
	FlipRequest                       // flip one bit of the request body at Rule.At, then pass it on
	Hang                              // answer nothing until the client gives up or the proxy closes
)

var faultNames = map[Fault]string{
	Latency: "latency", Error500: "500", Reset: "reset", TruncateResponse: "truncate-response",
	TruncateRequest: "truncate-request", FlipResponse: "flip-response", FlipRequest: "flip-request", Hang: "hang",
}

func (f Fault) String() string {
	if s, ok := faultNames[f]; ok {
		return s
	}
	return fmt.Sprintf("fault(%d)", int(f))
}

// Rule selects requests and the fault done to them.
type Rule struct {
	Method string // "" any method
	Path   string // substring of the URL path; "" any path
	Query  string // substring of the raw query; "" any
	Fault  Fault
	Delay  time.Duration // Latency: how long
	// At is the body offset of a flip or a cut; < 0 (or 0 with Middle)
	// means the middle of the body (its Content-Length), or byte 64 when
	// the length is unknown.
	At     int64
	Middle bool
	// Skip lets the first Skip matching requests pass unharmed; Times
	// limits the fault to that many requests after them (0: all).
	Skip  int
	Times int
}

// Proxy is a running fault-injecting reverse proxy.
type Proxy struct {
	Addr string // 127.0.0.1:port, to give the tier instead of the server's
	srv  *http.Server
	ln   net.Listener

	mu struct {
		sync.Mutex
		rules []*rule
		hits  map[Fault]int
		log   []string
	}
	hung     chan struct{} // closed when the proxy closes: hung requests end
	hangOnce sync.Once
}

type rule struct {
	Rule
	seen int
}

// Start starts a proxy to upstream (host:port) and closes it in t.Cleanup.
func Start(t testing.TB, upstream string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), ln: ln, hung: make(chan struct{})}
	p.mu.hits = map[Fault]int{}
	target := &url.URL{Scheme: "http", Host: upstream}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = r.In.Host // signatures (S3 v4) cover the Host header
		},
		Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 16, IdleConnTimeout: 30 * time.Second},
		ModifyResponse: func(resp *http.Response) error {
			if f, ok := resp.Request.Context().Value(responseFault{}).(*Rule); ok {
				resp.Body = wrapBody(resp.Body, resp.ContentLength, f)
			}
			return nil
		},
		ErrorLog:     discardLog,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) { panic(http.ErrAbortHandler) },
	}
	p.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { p.serve(w, r, rp) }),
		ErrorLog: discardLog}
	go func() { _ = p.srv.Serve(ln) }()
	t.Cleanup(p.Close)
	return p
}

// Close stops the proxy and ends hung requests.
func (p *Proxy) Close() {
	p.hangOnce.Do(func() { close(p.hung) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = p.srv.Shutdown(ctx)
	_ = p.srv.Close()
}

// Set replaces the rules. The first rule that matches a request and has
// faults left applies; a request no rule applies to passes unharmed.
func (p *Proxy) Set(rules ...Rule) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.mu.rules = p.mu.rules[:0]
	for _, r := range rules {
		p.mu.rules = append(p.mu.rules, &rule{Rule: r})
	}
}

// Clear removes every rule: all requests pass.
func (p *Proxy) Clear() { p.Set() }

// Hits returns how many requests fault f was done to.
func (p *Proxy) Hits(f Fault) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.hits[f]
}

// Log returns one line per fault done ("flip-request PUT /b/objects/..").
func (p *Proxy) Log() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.mu.log...)
}

func (p *Proxy) match(r *http.Request) *Rule {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ru := range p.mu.rules {
		if ru.Method != "" && ru.Method != r.Method || !strings.Contains(r.URL.Path, ru.Path) ||
			!strings.Contains(r.URL.RawQuery, ru.Query) {
			continue
		}
		if ru.Times > 0 && ru.seen >= ru.Skip+ru.Times {
			continue
		}
		ru.seen++
		if ru.seen <= ru.Skip {
			return nil
		}
		p.mu.hits[ru.Fault]++
		p.mu.log = append(p.mu.log, ru.Fault.String()+" "+r.Method+" "+r.URL.RequestURI())
		c := ru.Rule
		return &c
	}
	return nil
}

type responseFault struct{}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, rp *httputil.ReverseProxy) {
	f := p.match(r)
	if f == nil {
		rp.ServeHTTP(w, r)
		return
	}
	switch f.Fault {
	case Latency:
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			return
		case <-p.hung:
			return
		}
	case Error500:
		_, _ = io.Copy(io.Discard, r.Body)
		http.Error(w, "injected fault: 500", http.StatusInternalServerError)
		return
	case Reset:
		reset(w)
		return
	case Hang:
		select {
		case <-r.Context().Done():
		case <-p.hung:
		}
		reset(w)
		return
	case FlipRequest, TruncateRequest:
		r.Body = wrapBody(r.Body, r.ContentLength, f)
	case TruncateResponse, FlipResponse:
		r = r.WithContext(context.WithValue(r.Context(), responseFault{}, f))
	}
	rp.ServeHTTP(w, r)
}

// reset closes the client's connection with RST (SO_LINGER 0).
func reset(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	c, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// errCut is the error a cut body returns: the reverse proxy then drops the
// connection.
var errCut = errors.New("faulttest: body cut")

// wrapBody flips a bit of, or cuts, body at the rule's offset.
func wrapBody(body io.ReadCloser, length int64, f *Rule) io.ReadCloser {
	at := f.At
	if at < 0 || f.Middle {
		at = 64
		if length > 0 {
			at = length / 2
		}
	}
	return &faultyBody{rc: body, at: at, fault: f.Fault}
}

type faultyBody struct {
	rc    io.ReadCloser
	at    int64
	n     int64
	fault Fault
}

func (b *faultyBody) Read(p []byte) (int, error) {
	cut := b.fault == TruncateRequest || b.fault == TruncateResponse
	if cut {
		if b.n >= b.at {
			return 0, errCut
		}
		if rem := b.at - b.n; int64(len(p)) > rem {
			p = p[:rem]
		}
	}
	k, err := b.rc.Read(p)
	if !cut && b.n <= b.at && b.at < b.n+int64(k) {
		p[b.at-b.n] ^= 0x10
	}
	b.n += int64(k)
	return k, err
}

func (b *faultyBody) Close() error { return b.rc.Close() }

var discardLog = newDiscardLog()
