// Package manpage writes man pages (roff, man macros) generated from a kong
// command-line model: strata(1) describing every visible command, and one
// page per command (strata-archive(1), strata-tape-label(1)), with usage,
// help, flags (the command's own and those it inherits), an example and
// the exit codes. Hidden commands and flags are left out. Only cmd/strata
// imports it.
package manpage

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/alecthomas/kong"
)

// ExitCode is one row of the EXIT STATUS section.
type ExitCode struct {
	Code    int
	Meaning string
}

// Options say what the model does not: the program's version and the
// pages' date, each command's example, the exit codes, and extra sections
// of the main page (title → roff-free text).
type Options struct {
	Summary   string // the main page's one-line NAME description
	Version   string
	Date      string // e.g. "2026-12-03"
	Example   func(*kong.Node) string
	ExitCodes []ExitCode
	SeeAlso   []string // e.g. "systemctl(1)"
	Sections  []Section
}

// Section is an extra section of the main page: paragraphs, then terms
// each with its description.
type Section struct {
	Title string
	Text  string // paragraphs separated by blank lines
	Items [][2]string
}

// WriteAll writes strata.1 and one page per visible command into dir and
// returns the paths written.
func WriteAll(dir string, app *kong.Application, opts Options) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	name := app.Name
	var paths []string
	write := func(file string, fn func(io.Writer) error) error {
		p := filepath.Join(dir, file)
		f, err := os.Create(p)
		if err != nil {
			return err
		}
		if err := fn(f); err != nil {
			f.Close()
			return err
		}
		paths = append(paths, p)
		return f.Close()
	}
	if err := write(name+".1", func(w io.Writer) error { return Main(w, app, opts) }); err != nil {
		return nil, err
	}
	for _, n := range commands(app.Node) {
		page := strings.ReplaceAll(n.FullPath(), " ", "-")
		if err := write(page+".1", func(w io.Writer) error { return Command(w, n, opts) }); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

// commands lists every visible command below root, depth first.
func commands(root *kong.Node) []*kong.Node {
	var out []*kong.Node
	var walk func(*kong.Node)
	walk = func(n *kong.Node) {
		for _, c := range n.Children {
			if c.Type == kong.CommandNode && !c.Hidden {
				out = append(out, c)
				walk(c)
			}
		}
	}
	walk(root)
	return out
}

// Main writes the program's page: every command, with its flags.
func Main(w io.Writer, app *kong.Application, opts Options) error {
	var b strings.Builder
	name := app.Name
	header(&b, name, opts)
	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", esc(name), esc(opts.Summary))
	b.WriteString(".SH SYNOPSIS\n")
	fmt.Fprintf(&b, ".B %s\n.I COMMAND\n.RI [ FLAGS ]\n.RI [ ARGUMENTS ]\n", esc(name))
	b.WriteString(".SH DESCRIPTION\n")
	paragraphs(&b, app.Help)
	b.WriteString(".SH COMMANDS\n")
	for _, n := range commands(app.Node) {
		fmt.Fprintf(&b, ".SS %s\n", esc(synopsis(n)))
		paragraphs(&b, n.Help)
		if n.Detail != "" {
			paragraphs(&b, n.Detail)
		}
		flagList(&b, ownFlags(n))
		example(&b, n, opts)
		fmt.Fprintf(&b, "See\n.BR %s (1).\n", esc(strings.ReplaceAll(n.FullPath(), " ", "-")))
	}
	b.WriteString(".SH GLOBAL FLAGS\n")
	flagList(&b, ownFlags(app.Node))
	for _, s := range opts.Sections {
		fmt.Fprintf(&b, ".SH %s\n", esc(strings.ToUpper(s.Title)))
		paragraphs(&b, s.Text)
		for _, it := range s.Items {
			fmt.Fprintf(&b, ".TP\n.B %s\n%s\n", esc(it[0]), esc(it[1]))
		}
	}
	exitCodes(&b, opts)
	seeAlso(&b, opts.SeeAlso)
	_, err := io.WriteString(w, b.String())
	return err
}

// Command writes the page of one command.
func Command(w io.Writer, n *kong.Node, opts Options) error {
	var b strings.Builder
	page := strings.ReplaceAll(n.FullPath(), " ", "-")
	header(&b, page, opts)
	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", esc(page), esc(firstLine(n.Help)))
	b.WriteString(".SH SYNOPSIS\n")
	fmt.Fprintf(&b, ".B %s\n", esc(synopsis(n)))
	b.WriteString(".SH DESCRIPTION\n")
	paragraphs(&b, n.Help)
	if n.Detail != "" {
		paragraphs(&b, n.Detail)
	}
	if subs := visibleChildren(n); len(subs) > 0 {
		b.WriteString(".SH COMMANDS\n")
		for _, c := range subs {
			fmt.Fprintf(&b, ".TP\n.B %s\n%s\n", esc(synopsis(c)), esc(c.Help))
		}
	}
	if len(n.Positional) > 0 {
		b.WriteString(".SH ARGUMENTS\n")
		for _, a := range n.Positional {
			fmt.Fprintf(&b, ".TP\n.I %s\n%s\n", esc(a.Summary()), esc(a.Help))
		}
	}
	b.WriteString(".SH FLAGS\n")
	var flags []*kong.Flag
	for _, g := range n.AllFlags(true) {
		flags = append(flags, g...)
	}
	flagList(&b, flags)
	example(&b, n, opts)
	exitCodes(&b, opts)
	root := n
	for root.Parent != nil {
		root = root.Parent
	}
	seeAlso(&b, append([]string{root.Name + "(1)"}, opts.SeeAlso...))
	_, err := io.WriteString(w, b.String())
	return err
}

// synopsis is a command's usage line from the program name on.
func synopsis(n *kong.Node) string {
	root := n
	for root.Parent != nil {
		root = root.Parent
	}
	return root.Name + " " + n.Summary()
}

func header(b *strings.Builder, page string, opts Options) {
	fmt.Fprintf(b, ".\\\" Generated from the command-line definition; do not edit.\n")
	fmt.Fprintf(b, ".TH %s 1 %q %q \"User Commands\"\n", esc(strings.ToUpper(page)), opts.Date, "strata "+opts.Version)
}

func visibleChildren(n *kong.Node) []*kong.Node {
	var out []*kong.Node
	for _, c := range n.Children {
		if c.Type == kong.CommandNode && !c.Hidden {
			out = append(out, c)
		}
	}
	return out
}

// ownFlags are the visible flags a node declares itself.
func ownFlags(n *kong.Node) []*kong.Flag {
	var out []*kong.Flag
	for _, f := range n.Flags {
		if !f.Hidden {
			out = append(out, f)
		}
	}
	return out
}

func flagList(b *strings.Builder, flags []*kong.Flag) {
	for _, f := range flags {
		if f.Hidden {
			continue
		}
		spell := "\\-\\-" + esc(f.Name)
		if f.Short != 0 {
			spell = "\\-" + string(f.Short) + ", " + spell
		}
		if !f.IsBool() && !f.IsCounter() {
			spell += " " + esc(f.FormatPlaceHolder())
		}
		fmt.Fprintf(b, ".TP\n.B %s\n%s\n", spell, esc(f.Help))
	}
}

func example(b *strings.Builder, n *kong.Node, opts Options) {
	if opts.Example == nil {
		return
	}
	ex := opts.Example(n)
	if ex == "" {
		return
	}
	b.WriteString(".PP\nExample:\n.PP\n.RS\n.nf\n")
	for _, l := range strings.Split(ex, "\n") {
		b.WriteString(esc(l) + "\n")
	}
	b.WriteString(".fi\n.RE\n")
}

func exitCodes(b *strings.Builder, opts Options) {
	if len(opts.ExitCodes) == 0 {
		return
	}
	b.WriteString(".SH EXIT STATUS\n")
	for _, c := range opts.ExitCodes {
		fmt.Fprintf(b, ".TP\n.B %d\n%s\n", c.Code, esc(c.Meaning))
	}
}

func seeAlso(b *strings.Builder, pages []string) {
	if len(pages) == 0 {
		return
	}
	b.WriteString(".SH SEE ALSO\n")
	for i, p := range pages {
		name, sec, _ := strings.Cut(strings.TrimSuffix(p, ")"), "(")
		sep := ","
		if i == len(pages)-1 {
			sep = ""
		}
		fmt.Fprintf(b, ".BR %s (%s)%s\n", esc(name), sec, sep)
	}
}

// paragraphs writes text as roff paragraphs (blank lines separate them;
// lines starting with two spaces are kept as they are).
func paragraphs(b *strings.Builder, text string) {
	for _, p := range strings.Split(strings.TrimSpace(text), "\n\n") {
		if p == "" {
			continue
		}
		if strings.HasPrefix(p, "  ") {
			b.WriteString(".PP\n.nf\n")
			for _, l := range strings.Split(p, "\n") {
				b.WriteString(esc(l) + "\n")
			}
			b.WriteString(".fi\n")
			continue
		}
		b.WriteString(".PP\n" + esc(strings.Join(strings.Fields(p), " ")) + "\n")
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return strings.TrimSuffix(s, ".")
}

// esc escapes text for roff: backslashes, and a line that would start
// with a control character.
func esc(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") || strings.HasPrefix(l, "'") {
			lines[i] = `\&` + l
		}
	}
	return strings.Join(lines, "\n")
}
