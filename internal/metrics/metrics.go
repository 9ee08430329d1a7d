// Package metrics exports the update engine as Prometheus metrics, for the
// agent's /metrics:
//
//	qx_update_status{status}                        1 for the current status, 0 for the others
//	qx_update_installed_info{version,component}     1 per installed component; component="os" is the release
//	qx_update_last_check_timestamp_seconds          when the last check ended (absent before the first)
//	qx_update_last_check_success                    1 when the last check verified a manifest, else 0
//	qx_update_downloaded_bytes_total                artifact bytes downloaded
//	qx_update_install_duration_seconds{result}      histogram: operation start to its terminal event
//	qx_update_failures_total{cause}                 failed and rolled-back operations, by cause
//	qx_update_outbox_events                         events waiting in the journal for the bus
//
// The gauges are read from the engine at scrape time; the counters and the
// histogram are fed from the engine's events by Run.
package metrics

import (
	"context"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quantix-os/update-agent/internal/abslot"
	"github.com/quantix-os/update-agent/internal/archive"
	"github.com/quantix-os/update-agent/internal/fetch"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/subjects"
)

// Source is what the metrics read of the update engine.
type Source interface {
	// Status is the current status with the installed versions.
	Status() subjects.StatusReport
	// Journal holds the last check time and the history.
	Journal() *journal.Store
	// Outbox is how many events wait for the bus.
	Outbox() int
	Subscribe() (events <-chan subjects.UpdateEvent, cancel func())
}

// Failure causes, the values of qx_update_failures_total's cause label.
const (
	CauseChecksum    = "checksum"
	CauseSize        = "size"
	CauseDownload    = "download"
	CauseArchive     = "archive"
	CauseHealth      = "health"
	CauseRestart     = "restart"
	CauseMaintenance = "maintenance"
	CauseDiskSpace   = "disk_space"
	CauseOther       = "other"
)

var causes = []string{CauseChecksum, CauseSize, CauseDownload, CauseArchive, CauseHealth, CauseRestart, CauseMaintenance, CauseDiskSpace, CauseOther}

var statuses = []subjects.Status{
	subjects.StatusIdle, subjects.StatusChecking, subjects.StatusUpToDate, subjects.StatusAvailable,
	subjects.StatusDownloading, subjects.StatusApplying, subjects.StatusComplete, subjects.StatusError,
	subjects.StatusRebootRequired,
}

var results = []subjects.EventType{subjects.EventCompleted, subjects.EventFailed, subjects.EventRolledBack, subjects.EventCancelled}

// DurationBuckets are qx_update_install_duration_seconds' buckets: a
// component update takes seconds, a full image over a slow link an hour.
var DurationBuckets = []float64{1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600}

var (
	statusDesc = prometheus.NewDesc("qx_update_status",
		"Update status of this host: 1 for the current status, 0 for the others.", []string{"status"}, nil)
	installedDesc = prometheus.NewDesc("qx_update_installed_info",
		`Installed versions: 1 per component; component "os" is the Quantix-OS release.`, []string{"version", "component"}, nil)
	lastCheckDesc = prometheus.NewDesc("qx_update_last_check_timestamp_seconds",
		"Unix time the last update check ended.", nil, nil)
	lastCheckOKDesc = prometheus.NewDesc("qx_update_last_check_success",
		"1 when the last update check got a verified manifest, 0 when it failed.", nil, nil)
	outboxDesc = prometheus.NewDesc("qx_update_outbox_events",
		"Update events kept in the journal until the bus acknowledges them.", nil, nil)
)

// Metrics exports one engine. Create with New, then run Run.
type Metrics struct {
	src         Source
	events      <-chan subjects.UpdateEvent
	unsubscribe func()

	downloaded prometheus.Counter
	duration   *prometheus.HistogramVec
	failures   *prometheus.CounterVec

	mu  sync.Mutex
	ops map[string]*opState // operations seen in flight, by id
	// The last check's outcome, derived from the status it left.
	checkSeen  time.Time
	checkOK    float64
	checkKnown bool
}

type opState struct {
	first time.Time // time of its first event seen: the start when the journal has none
	bytes int64     // bytesDone already counted
}

// New returns the metrics of src and registers them with reg (nil: not
// registered). It panics when reg already holds them, as MustRegister does.
// New subscribes to src's events at once, so none is lost before Run.
func New(src Source, reg prometheus.Registerer) *Metrics {
	events, unsubscribe := src.Subscribe()
	m := &Metrics{
		src: src, events: events, unsubscribe: unsubscribe, ops: map[string]*opState{},
		downloaded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "qx_update_downloaded_bytes_total",
			Help: "Bytes of update artifacts downloaded.",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "qx_update_install_duration_seconds",
			Help:    "Time from the start of an update operation to its end, by result.",
			Buckets: DurationBuckets,
		}, []string{"result"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "qx_update_failures_total",
			Help: "Update operations that failed or were rolled back, by cause.",
		}, []string{"cause"}),
	}
	// Every series exists from the start, so rate() sees the first failure.
	for _, c := range causes {
		m.failures.WithLabelValues(c)
	}
	for _, r := range results {
		m.duration.WithLabelValues(string(r))
	}
	if reg != nil {
		reg.MustRegister(collector{m}, m.downloaded, m.duration, m.failures)
	}
	return m
}

// Run feeds the counters and the histogram from the engine's events until
// ctx ends, then unsubscribes. Call it once; the caller waits for it.
func (m *Metrics) Run(ctx context.Context) {
	defer m.unsubscribe()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-m.events:
			if !ok {
				return
			}
			m.observe(ev)
		}
	}
}

func (m *Metrics) observe(ev subjects.UpdateEvent) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if ev.OperationID == "" {
		return
	}
	op := m.ops[ev.OperationID]
	if op == nil {
		op = &opState{first: ev.Time}
		m.ops[ev.OperationID] = op
	}
	switch {
	case ev.Type == subjects.EventProgress && ev.Status == subjects.StatusDownloading && ev.BytesDone != nil:
		// bytesDone counts up over the whole operation; count what is new.
		if d := *ev.BytesDone - op.bytes; d > 0 {
			m.downloaded.Add(float64(d))
			op.bytes = *ev.BytesDone
		}
	case ev.Type.Terminal():
		start := m.started(ev.OperationID)
		if start.IsZero() {
			start = op.first
		}
		if d := ev.Time.Sub(start); d >= 0 {
			m.duration.WithLabelValues(string(ev.Type)).Observe(d.Seconds())
		}
		if ev.Type == subjects.EventFailed || ev.Type == subjects.EventRolledBack {
			m.failures.WithLabelValues(cause(ev.Message)).Inc()
		}
		delete(m.ops, ev.OperationID)
	}
}

// started is when the operation began by the journal's history, which
// finish writes before the terminal event, and which counts the time before
// an agent restart the operation survived.
func (m *Metrics) started(id string) time.Time {
	var t time.Time
	m.src.Journal().View(func(s *journal.State) {
		for i := len(s.History) - 1; i >= 0; i-- {
			if s.History[i].OperationID == id {
				t = s.History[i].StartedAt
				return
			}
		}
	})
	return t
}

// restartRE matches the engine's service restart failure: "{rc-service} {service} restart: ...".
var restartRE = regexp.MustCompile(`\S+ \S+ restart: `)

// archiveErrs are the texts of archive's refusals.
var archiveErrs = []error{archive.ErrUnsafePath, archive.ErrLinkEscape, archive.ErrHardLink, archive.ErrSpecialFile,
	archive.ErrSetuid, archive.ErrTooLarge, archive.ErrTooManyEntries, archive.ErrDuplicate, archive.ErrCorrupt}

// cause classifies the message of a failed or rolled_back event. Events
// carry text, not errors, so it matches the texts of the sentinel errors
// and the engine's operation prefixes; paths in a message (a temp dir named
// after a test, say) cannot fake the structured parts.
func cause(msg string) string {
	m := strings.TrimPrefix(msg, "rolled back: ")
	has := func(errs ...error) bool {
		for _, e := range errs {
			if strings.Contains(m, e.Error()) {
				return true
			}
		}
		return false
	}
	switch {
	case has(fetch.ErrChecksum, abslot.ErrVerify):
		return CauseChecksum
	case has(fetch.ErrSize, abslot.ErrSize):
		return CauseSize
	case has(archiveErrs...) || strings.HasPrefix(m, "stage "):
		return CauseArchive
	case strings.HasPrefix(m, "download "):
		return CauseDownload
	case strings.HasPrefix(m, "maintenance"):
		return CauseMaintenance
	case strings.HasPrefix(m, "disk space "):
		return CauseDiskSpace
	case strings.Contains(m, "health check ") || strings.HasPrefix(m, "slot ") && strings.Contains(m, "unhealthy") ||
		strings.HasPrefix(m, "trial boot "):
		return CauseHealth
	case restartRE.MatchString(m):
		return CauseRestart
	}
	return CauseOther
}

// observeCheck derives the last check's outcome. The engine records when a
// check ended (journal LastCheck) and leaves its outcome in the status: a
// check error, or up_to_date / available. Call with m.mu held.
func (m *Metrics) observeCheck(last time.Time, st subjects.StatusReport) {
	if last.IsZero() || !last.After(m.checkSeen) {
		return
	}
	switch st.Status {
	case subjects.StatusChecking:
		return // not decided yet: look again next time
	case subjects.StatusError:
		// A failed check's message is "check channel C: ..."; another error
		// came from an update that ran after a successful check.
		m.checkOK, m.checkKnown = 1, true
		if strings.HasPrefix(st.Message, "check") {
			m.checkOK = 0
		}
	case subjects.StatusUpToDate, subjects.StatusAvailable, subjects.StatusDownloading, subjects.StatusApplying,
		subjects.StatusComplete, subjects.StatusRebootRequired:
		m.checkOK, m.checkKnown = 1, true
	default:
		// idle (a check from before a restart, or one followed by a cancel): unknown.
		m.checkKnown = false
	}
	m.checkSeen = last
}

// collector reads the gauges from the engine at scrape time.
type collector struct{ m *Metrics }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{statusDesc, installedDesc, lastCheckDesc, lastCheckOKDesc, outboxDesc} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	st := m.src.Status()
	known := false
	for _, s := range statuses {
		v := 0.0
		if s == st.Status {
			v, known = 1, true
		}
		ch <- prometheus.MustNewConstMetric(statusDesc, prometheus.GaugeValue, v, string(s))
	}
	if !known && st.Status != "" {
		ch <- prometheus.MustNewConstMetric(statusDesc, prometheus.GaugeValue, 1, string(st.Status))
	}
	if st.Versions.OS != "" {
		ch <- prometheus.MustNewConstMetric(installedDesc, prometheus.GaugeValue, 1, st.Versions.OS, "os")
	}
	for name, v := range st.Versions.Components {
		ch <- prometheus.MustNewConstMetric(installedDesc, prometheus.GaugeValue, 1, v, name)
	}
	var last time.Time
	m.src.Journal().View(func(s *journal.State) { last = s.LastCheck })
	if !last.IsZero() {
		ch <- prometheus.MustNewConstMetric(lastCheckDesc, prometheus.GaugeValue, float64(last.UnixNano())/1e9)
	}
	m.mu.Lock()
	m.observeCheck(last, st)
	ok, okKnown := m.checkOK, m.checkKnown
	m.mu.Unlock()
	if okKnown {
		ch <- prometheus.MustNewConstMetric(lastCheckOKDesc, prometheus.GaugeValue, ok)
	}
	ch <- prometheus.MustNewConstMetric(outboxDesc, prometheus.GaugeValue, float64(m.src.Outbox()))
}
