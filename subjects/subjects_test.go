package subjects

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestBuildersParse(t *testing.T) {
	const id = "node-a_1"
	tests := []struct {
		subject string
		want    string
		kind    Kind
		node    string
	}{
		{UpdateCheck(id), "qx.v1.node.node-a_1.update.check", KindCheck, id},
		{UpdateApply(id), "qx.v1.node.node-a_1.update.apply", KindApply, id},
		{UpdateCancel(id), "qx.v1.node.node-a_1.update.cancel", KindCancel, id},
		{UpdateStatus(id), "qx.v1.node.node-a_1.update.status", KindStatus, id},
		{FleetCheck(), "qx.v1.fleet.update.check", KindFleetCheck, ""},
		{NodeMaintenance(id), "qx.v1.node.node-a_1.maintenance", KindMaintenance, id},
		{VDCMaintenanceRequest(id), "qx.v1.vdc.maintenance.node-a_1.request", KindMaintenanceRequest, id},
		{VDCMaintenanceStatus(id), "qx.v1.vdc.maintenance.node-a_1.status", KindMaintenanceStatus, id},
		{VDCMaintenanceRelease(id), "qx.v1.vdc.maintenance.node-a_1.release", KindMaintenanceRelease, id},
		{UpdateEvents(id), "qx.v1.events.node-a_1.update", KindUpdateEvent, id},
		{AgentEvents(id), "qx.v1.events.node-a_1.agent", KindAgentEvent, id},
	}
	for _, tt := range tests {
		if tt.subject != tt.want {
			t.Errorf("built %q, want %q", tt.subject, tt.want)
		}
		k, n, err := Parse(tt.subject)
		if err != nil || k != tt.kind || n != tt.node {
			t.Errorf("Parse(%q) = %q, %q, %v; want %q, %q", tt.subject, k, n, err, tt.kind, tt.node)
		}
	}
	wild := map[string]string{
		NodeCommands(id):       "qx.v1.node.node-a_1.>",
		Fleet():                "qx.v1.fleet.>",
		Events(id):             "qx.v1.events.node-a_1.>",
		AllEvents():            "qx.v1.events.>",
		VDCMaintenanceFrom(id): "qx.v1.vdc.maintenance.node-a_1.>",
		InboxPrefix(id):        "_INBOX_node-a_1",
	}
	for got, want := range wild {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, s := range []string{
		"", "qx", "qx.v2.node.a.update.check", "qx.v1.node.a.update.reboot", "qx.v1.node.a.b.update.check",
		"qx.v1.node.*.update.check", "qx.v1.events.a.other", "qx.v1.vdc.maintenance.a.drop", "foo.v1.fleet.update.check",
		"qx.v1.node..update.check",
	} {
		if _, _, err := Parse(s); err == nil {
			t.Errorf("Parse(%q) accepted", s)
		}
	}
}

func TestValidNodeID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"a", true}, {"node-A_9", true}, {strings.Repeat("x", 64), true},
		{"", false}, {strings.Repeat("x", 65), false}, {"a.b", false}, {"a*", false}, {"a>", false}, {"a b", false}, {"nöde", false},
	}
	for _, tt := range tests {
		err := ValidNodeID(tt.id)
		if (err == nil) != tt.ok {
			t.Errorf("ValidNodeID(%q) = %v, want ok=%v", tt.id, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidNodeID) {
			t.Errorf("ValidNodeID(%q): %v is not ErrInvalidNodeID", tt.id, err)
		}
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"empty is {}", "", true},
		{"valid", `{"operationId":"x","forceReboot":true}`, true},
		{"unknown field", `{"operationId":"x","reboot":true}`, false},
		{"malformed", `{"operationId":`, false},
		{"trailing", `{"operationId":"x"} {}`, false},
		{"wrong type", `{"forceReboot":"yes"}`, false},
		{"oversized", `{"operationId":"` + strings.Repeat("a", MaxPayload) + `"}`, false},
	}
	for _, tt := range tests {
		var cmd ApplyCommand
		err := Decode([]byte(tt.in), &cmd)
		if (err == nil) != tt.ok {
			t.Errorf("%s: Decode = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v is not ErrMalformed", tt.name, err)
		}
	}
}

func TestJSONShapes(t *testing.T) {
	p := 40
	ev := UpdateEvent{ID: "e1", NodeID: "a", Seq: 7, Type: EventProgress, Status: StatusDownloading, Progress: &p}
	b, _ := json.Marshal(ev)
	for _, k := range []string{`"id":"e1"`, `"nodeId":"a"`, `"seq":7`, `"type":"progress"`, `"status":"downloading"`, `"progress":40`} {
		if !strings.Contains(string(b), k) {
			t.Errorf("UpdateEvent JSON %s lacks %s", b, k)
		}
	}
	if strings.Contains(string(b), "operationId") {
		t.Errorf("empty optional field serialized: %s", b)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{UpdateCheck("a"), FleetCheck(), VDCMaintenanceRequest("b"), UpdateEvents("c"), "qx.v1.node..x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, id, err := Parse(s)
		if err != nil {
			return
		}
		if k != KindFleetCheck && ValidNodeID(id) != nil {
			t.Fatalf("Parse(%q) accepted invalid node %q", s, id)
		}
	})
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{`{}`, `{"operationId":"x","forceReboot":true,"components":["a"]}`, `{"signedManifest":{"signed":"eA=="}}`, `[`, `null`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var a ApplyCommand
		if Decode(b, &a) == nil {
			if _, err := json.Marshal(a); err != nil {
				t.Fatal(err)
			}
		}
		var c CheckRequest
		_ = Decode(b, &c)
		var m MaintenanceEvent
		_ = Decode(b, &m)
	})
}
