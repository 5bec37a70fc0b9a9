package cli

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/banger/banger/internal/api"
	"github.com/banger/banger/internal/model"
	"github.com/banger/banger/internal/progress"
)

// table writes aligned columns.
func table(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// kv writes "key: value" lines aligned, skipping empty values.
func kv(w io.Writer, pairs ...string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for i := 0; i+1 < len(pairs); i += 2 {
		if pairs[i+1] == "" {
			continue
		}
		fmt.Fprintf(tw, "%s:\t%s\n", pairs[i], pairs[i+1])
	}
	return tw.Flush()
}

func size(b int64) string {
	if b <= 0 {
		return "-"
	}
	return model.FormatSize(b)
}

func ago(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// formatProgress renders one progress event as a line.
func formatProgress(p progress.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "[%6.1fs] %s", p.Elapsed, p.Phase)
	if p.Message != "" {
		b.WriteString(": " + p.Message)
	}
	if p.Total > 0 {
		fmt.Fprintf(&b, " (%d%%)", p.Done*100/p.Total)
	}
	return b.String()
}

// progressPrinter prints progress lines to w; safe for concurrent use.
func progressPrinter(w io.Writer) progress.Func {
	var mu sync.Mutex
	return func(p progress.Event) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintln(w, formatProgress(p))
	}
}

func vmRows(vms []model.VM, now time.Time) [][]string {
	rows := [][]string{}
	for _, v := range vms {
		rows = append(rows, []string{model.ShortID(v.ID), v.Name, string(v.State), model.ShortID(v.ImageID), v.VMM,
			fmt.Sprint(v.CPUs), size(int64(v.MemoryMiB) << 20), size(v.DiskBytes), orDash(v.GuestIP), ago(v.CreatedAt, now)})
	}
	return rows
}

var vmHeader = []string{"ID", "NAME", "STATE", "IMAGE", "VMM", "CPUS", "MEMORY", "DISK", "IP", "CREATED"}

func imageRows(ims []model.Image, now time.Time) [][]string {
	rows := [][]string{}
	for _, im := range ims {
		rows = append(rows, []string{model.ShortID(im.ID), im.Name, size(im.SizeBytes), orDash(im.Source), orDash(im.Init), ago(im.CreatedAt, now)})
	}
	return rows
}

var imageHeader = []string{"ID", "NAME", "SIZE", "SOURCE", "INIT", "CREATED"}

func kernelRows(ks []api.KernelEntry) [][]string {
	rows := [][]string{}
	for _, k := range ks {
		id, version, state := "-", "-", "available"
		if k.Kernel != nil {
			id, version, state = model.ShortID(k.Kernel.ID), orDash(k.Kernel.Version), "installed"
		}
		if !k.Catalog && k.Kernel != nil {
			state = "imported"
		}
		rows = append(rows, []string{id, k.Name, version, state, k.Description})
	}
	return rows
}

var kernelHeader = []string{"ID", "NAME", "VERSION", "STATE", "DESCRIPTION"}

func sessionRows(ss []model.Session, now time.Time) [][]string {
	rows := [][]string{}
	for _, s := range ss {
		exit := "-"
		if s.ExitCode != nil {
			exit = fmt.Sprint(*s.ExitCode)
		}
		cmd := strings.Join(append([]string{s.Command}, s.Args...), " ")
		if len(cmd) > 40 {
			cmd = cmd[:37] + "..."
		}
		rows = append(rows, []string{model.ShortID(s.ID), s.Name, string(s.Status), exit, cmd, ago(s.CreatedAt, now)})
	}
	return rows
}

var sessionHeader = []string{"ID", "NAME", "STATUS", "EXIT", "COMMAND", "CREATED"}
