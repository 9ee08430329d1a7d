package api

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/quantix-os/update-agent/internal/engine"
	"github.com/quantix-os/update-agent/internal/journal"
	"github.com/quantix-os/update-agent/subjects"
)

// openAPIPath is the document the tests hold to the facade.
const openAPIPath = "../../docs/openapi.yaml"

// loadOpenAPI parses the document as a generic tree.
func loadOpenAPI(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(openAPIPath)
	if err != nil {
		t.Fatalf("read the OpenAPI document: %v", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("parse %s: %v", openAPIPath, err)
	}
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.0.") {
		t.Fatalf("%s: openapi %q, want 3.0.x", openAPIPath, v)
	}
	return doc
}

// obj is m[key] as a map, or nil.
func obj(m any, key string) map[string]any {
	mm, _ := m.(map[string]any)
	v, _ := mm[key].(map[string]any)
	return v
}

var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// ginPathParam matches gin's :name and *name path segments.
var ginPathParam = regexp.MustCompile(`[:*]([A-Za-z0-9_]+)`)

// TestOpenAPIRoutes fails when a route of Routes is missing from the
// document, or the document has a path or method the facade does not serve.
func TestOpenAPIRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	want := map[string]bool{}
	for _, r := range Routes {
		want[r.Method+" "+ginPathParam.ReplaceAllString(r.Path, "{$1}")] = true
	}
	got := map[string]bool{}
	paths := obj(doc, "paths")
	if len(paths) == 0 {
		t.Fatal("the document has no paths")
	}
	for p, item := range paths {
		for k := range item.(map[string]any) {
			if slices.Contains(httpMethods, k) {
				got[strings.ToUpper(k)+" "+p] = true
			}
		}
	}
	for r := range want {
		if !got[r] {
			t.Errorf("api.Routes has %s; the OpenAPI document does not", r)
		}
	}
	for r := range got {
		if !want[r] {
			t.Errorf("the OpenAPI document has %s; api.Routes does not", r)
		}
	}
}

// TestOpenAPIOperations checks what every operation must say: its path
// parameters, a success answer, the error shape on every error answer, and
// bearer auth on writes.
func TestOpenAPIOperations(t *testing.T) {
	doc := loadOpenAPI(t)
	if s := obj(obj(obj(doc, "components"), "securitySchemes"), "bearerAuth"); s["type"] != "http" || s["scheme"] != "bearer" {
		t.Errorf("securitySchemes.bearerAuth = %v, want http bearer", s)
	}
	ids := map[string]string{}
	for p, item := range obj(doc, "paths") {
		for _, m := range httpMethods {
			op := obj(item, m)
			if op == nil {
				continue
			}
			name := strings.ToUpper(m) + " " + p
			if id, _ := op["operationId"].(string); id == "" {
				t.Errorf("%s: no operationId", name)
			} else if other, dup := ids[id]; dup {
				t.Errorf("%s: operationId %s is also %s's", name, id, other)
			} else {
				ids[id] = name
			}

			// Every {param} of the path is declared, and nothing else is.
			var declared []string
			params, _ := op["parameters"].([]any)
			for _, prm := range params {
				pm := prm.(map[string]any)
				if pm["in"] == "path" {
					declared = append(declared, pm["name"].(string))
					if pm["required"] != true {
						t.Errorf("%s: path parameter %v is not required", name, pm["name"])
					}
				}
			}
			var inPath []string
			for _, mm := range regexp.MustCompile(`\{([^}]+)\}`).FindAllStringSubmatch(p, -1) {
				inPath = append(inPath, mm[1])
			}
			slices.Sort(declared)
			slices.Sort(inPath)
			if !slices.Equal(declared, inPath) {
				t.Errorf("%s: path parameters declared %v, in the path %v", name, declared, inPath)
			}

			resps := obj(op, "responses")
			ok := false
			for code, r := range resps {
				n, err := strconv.Atoi(code)
				if err != nil {
					t.Errorf("%s: response %q is not a status code", name, code)
					continue
				}
				if n < 400 {
					ok = ok || n < 300
					continue
				}
				if ref := errorSchemaRef(doc, r.(map[string]any)); ref != "#/components/schemas/Error" {
					t.Errorf("%s: %s answer's schema is %q, want the Error shape", name, code, ref)
				}
			}
			if !ok {
				t.Errorf("%s: no 2xx answer", name)
			}

			write := m == "post" || m == "put"
			sec, _ := op["security"].([]any)
			bearer := false
			for _, s := range sec {
				_, has := s.(map[string]any)["bearerAuth"]
				bearer = bearer || has
			}
			if write != bearer {
				t.Errorf("%s: bearer auth %v, want %v (writes only)", name, bearer, write)
			}
			if _, has := resps["401"]; write != has {
				t.Errorf("%s: documents 401 %v, want %v", name, has, write)
			}
			if _, has := resps["403"]; !has {
				t.Errorf("%s: no 403 (every route checks the Host)", name)
			}
		}
	}
}

// errorSchemaRef is the JSON schema $ref of response r, following a
// response $ref.
func errorSchemaRef(doc map[string]any, r map[string]any) string {
	if ref, ok := r["$ref"].(string); ok {
		r = obj(obj(obj(doc, "components"), "responses"), strings.TrimPrefix(ref, "#/components/responses/"))
	}
	s := obj(obj(obj(r, "content"), "application/json"), "schema")
	ref, _ := s["$ref"].(string)
	return ref
}

// TestOpenAPIRefs fails on a $ref to nothing.
func TestOpenAPIRefs(t *testing.T) {
	doc := loadOpenAPI(t)
	n := 0
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if k == "$ref" {
					n++
					ref, _ := c.(string)
					parts := strings.Split(strings.TrimPrefix(ref, "#/"), "/")
					if !strings.HasPrefix(ref, "#/") || len(parts) != 3 || obj(obj(doc, parts[0]), parts[1])[parts[2]] == nil {
						t.Errorf("%s: $ref %q names nothing in the document", path, ref)
					}
					continue
				}
				walk(path+"/"+k, c)
			}
		case []any:
			for i, c := range v {
				walk(fmt.Sprintf("%s/%d", path, i), c)
			}
		}
	}
	walk("", doc)
	if n < 20 {
		t.Errorf("only %d $refs: the walk is broken", n)
	}
}

// TestOpenAPISchemasMatchGo holds each schema to the Go type the facade
// encodes or decodes: the same JSON names, compatible types, and (for
// answers) required exactly when the field is always present.
func TestOpenAPISchemasMatchGo(t *testing.T) {
	doc := loadOpenAPI(t)
	schemas := obj(obj(doc, "components"), "schemas")
	tests := []struct {
		schema string
		typ    reflect.Type
		answer bool // encoded by the facade: non-omitempty fields are required
	}{
		{"Error", reflect.TypeFor[errorBody](), true},
		{"ErrorDetail", reflect.TypeFor[errorDetail](), true},
		{"CheckResponse", reflect.TypeFor[checkResponse](), true},
		{"ComponentUpdate", reflect.TypeFor[subjects.ComponentUpdate](), true},
		{"CurrentResponse", reflect.TypeFor[currentResponse](), true},
		{"StatusReport", reflect.TypeFor[subjects.StatusReport](), true},
		{"Progress", reflect.TypeFor[subjects.Progress](), true},
		{"Versions", reflect.TypeFor[subjects.Versions](), true},
		{"OperationResponse", reflect.TypeFor[operationResponse](), true},
		{"Settings", reflect.TypeFor[engine.Settings](), true},
		{"HistoryResponse", reflect.TypeFor[historyResponse](), true},
		{"HistoryEntry", reflect.TypeFor[journal.Entry](), true},
		{"UpdateEvent", reflect.TypeFor[subjects.UpdateEvent](), true},
		{"ApplyCommand", reflect.TypeFor[subjects.ApplyCommand](), false},
		{"CancelCommand", reflect.TypeFor[subjects.CancelCommand](), false},
		{"SettingsUpdate", reflect.TypeFor[engine.SettingsUpdate](), false},
	}
	for _, tt := range tests {
		t.Run(tt.schema, func(t *testing.T) {
			s := schemas[tt.schema]
			if s == nil {
				t.Fatalf("no schema %s", tt.schema)
			}
			props := obj(s, "properties")
			var required []string
			if r, ok := s.(map[string]any)["required"].([]any); ok {
				for _, v := range r {
					required = append(required, v.(string))
				}
			}
			var wantRequired []string
			fields := map[string]reflect.StructField{}
			for f := range tt.typ.Fields() {
				name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
				if name == "-" || !f.IsExported() {
					continue
				}
				if name == "" {
					name = f.Name
				}
				fields[name] = f
				if !slices.Contains(strings.Split(opts, ","), "omitempty") && !slices.Contains(strings.Split(opts, ","), "omitzero") {
					wantRequired = append(wantRequired, name)
				}
			}
			for name, f := range fields {
				p, ok := props[name]
				if !ok {
					t.Errorf("%s.%s (json %q) is not in the schema", tt.typ, f.Name, name)
					continue
				}
				if got, want := schemaType(schemas, p.(map[string]any)), jsonType(f.Type); got != want {
					t.Errorf("property %s is %s in the schema, %s (%s) in Go", name, got, want, f.Type)
				}
			}
			for name := range props {
				if _, ok := fields[name]; !ok {
					t.Errorf("property %s is not a field of %s", name, tt.typ)
				}
			}
			for _, r := range required {
				if _, ok := props[r]; !ok {
					t.Errorf("required %s is not a property", r)
				}
			}
			if tt.answer {
				slices.Sort(required)
				slices.Sort(wantRequired)
				if !slices.Equal(required, wantRequired) {
					t.Errorf("required %v, want the always-present fields %v", required, wantRequired)
				}
			}
		})
	}
}

// schemaType is a property's JSON type, through $refs; date-time strings are "time".
func schemaType(schemas map[string]any, p map[string]any) string {
	for range 10 {
		ref, ok := p["$ref"].(string)
		if !ok {
			break
		}
		p, _ = schemas[strings.TrimPrefix(ref, "#/components/schemas/")].(map[string]any)
	}
	typ, _ := p["type"].(string)
	if typ == "string" && p["format"] == "date-time" {
		return "time"
	}
	return typ
}

// jsonType is the JSON type encoding/json gives a Go type.
func jsonType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch {
	case t == reflect.TypeFor[time.Time]():
		return "time"
	case t == reflect.TypeFor[json.RawMessage]():
		return "any"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice, reflect.Array:
		return "array"
	case reflect.Map, reflect.Struct:
		return "object"
	}
	return t.Kind().String()
}

// TestOpenAPIEnums holds the documented enums to the Go constants, read
// from the source so a new constant cannot be forgotten here.
func TestOpenAPIEnums(t *testing.T) {
	doc := loadOpenAPI(t)
	schemas := obj(obj(doc, "components"), "schemas")
	enum := func(s map[string]any) []string {
		var out []string
		for _, v := range s["enum"].([]any) {
			out = append(out, v.(string))
		}
		slices.Sort(out)
		return out
	}
	codes := stringConsts(t, ".", func(name, _ string) bool { return strings.HasPrefix(name, "Code") })
	statuses := stringConsts(t, "../../subjects", func(_, typ string) bool { return typ == "Status" })
	events := stringConsts(t, "../../subjects", func(name, typ string) bool {
		return typ == "EventType" && name != "EventOnline" // AgentEvent only
	})
	tests := []struct {
		name      string
		got, want []string
	}{
		{"ErrorDetail.code", enum(obj(obj(schemas, "ErrorDetail"), "properties")["code"].(map[string]any)), codes},
		{"Status", enum(schemas["Status"].(map[string]any)), statuses},
		{"EventType", enum(schemas["EventType"].(map[string]any)), events},
	}
	for _, tt := range tests {
		if len(tt.want) < 3 || !slices.Equal(tt.got, tt.want) {
			t.Errorf("%s enum %v, want the Go constants %v", tt.name, tt.got, tt.want)
		}
	}
}

// stringConsts returns the sorted values of the string constants in the Go
// package at dir (tests excluded) for which keep(name, type name) holds.
func stringConsts(t *testing.T, dir string, keep func(name, typ string) bool) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	var out []string
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, dir+"/"+e.Name(), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				typ := ""
				if id, ok := vs.Type.(*ast.Ident); ok {
					typ = id.Name
				}
				for i, n := range vs.Names {
					if i >= len(vs.Values) {
						continue
					}
					lit, ok := vs.Values[i].(*ast.BasicLit)
					if !ok || lit.Kind != token.STRING || !keep(n.Name, typ) {
						continue
					}
					v, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					out = append(out, v)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// TestOpenAPIWriteMethods checks the routes this document calls writes
// are the facade's only POST and PUT routes (the token check's scope).
func TestOpenAPIWriteMethods(t *testing.T) {
	var writes []string
	for _, r := range Routes {
		if r.Method == http.MethodPost || r.Method == http.MethodPut {
			writes = append(writes, r.Method+" "+r.Path)
		}
	}
	want := []string{"POST /api/v1/updates/apply", "POST /api/v1/updates/cancel", "PUT /api/v1/updates/config"}
	if !slices.Equal(writes, want) {
		t.Errorf("write routes %v, want %v: update docs/openapi.yaml's security", writes, want)
	}
}
