// Package events reads and writes agentflux contract events on Kafka, as
// docs/wire-protocol.md defines them: CloudEvents 1.0 in binary content mode (the
// payload is the record value, the attributes are ce_* headers), the context headers,
// W3C trace context, and the record key taken from the message's key field.
//
// Which topic carries which message, and which field keys its records, is read from
// the contracts themselves: the (agentflux.v1.event) option of each message in the
// generated descriptors. A contract added to proto/ shows up here without a change.
package events

import (
	"fmt"
	"sort"
	"sync"

	agentfluxv1 "github.com/agentflux/agentflux/gen/go/agentflux/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// Package is the protobuf package of the contracts.
const Package protoreflect.FullName = "agentflux.v1"

// Topic is one contract topic: the Kafka topic (without a deployment's namespace),
// the message type it carries and the field whose value is the record key.
type Topic struct {
	// Name is the topic as the contract names it, e.g. "agent.requested". A
	// deployment prefixes it with its namespace (AGENTFLUX_NAMESPACE).
	Name string
	// Type is the message the topic carries; its full name is the records' ce_type.
	Type protoreflect.MessageType
	// KeyField is the string field of Type whose value is the record key.
	KeyField protoreflect.FieldDescriptor
}

// TypeName is the topic's ce_type: the full protobuf name of its message.
func (t Topic) TypeName() string { return string(t.Type.Descriptor().FullName()) }

// In is the topic's name in a deployment with the given namespace.
func (t Topic) In(namespace string) string { return namespace + t.Name }

var (
	topicsOnce sync.Once
	topics     []Topic
	topicsErr  error
)

// Topics returns every contract topic, sorted by name, read from the
// (agentflux.v1.event) options of the registered agentflux.v1 descriptors.
func Topics() ([]Topic, error) {
	topicsOnce.Do(func() { topics, topicsErr = scan(protoregistry.GlobalFiles, protoregistry.GlobalTypes) })
	if topicsErr != nil {
		return nil, topicsErr
	}
	return append([]Topic(nil), topics...), nil
}

// TopicOf returns the contract topic that carries messages of the given type.
func TopicOf(desc protoreflect.MessageDescriptor) (Topic, error) {
	all, err := Topics()
	if err != nil {
		return Topic{}, err
	}
	for _, t := range all {
		if t.Type.Descriptor().FullName() == desc.FullName() {
			return t, nil
		}
	}
	return Topic{}, fmt.Errorf("%s is not a contract event (it has no (agentflux.v1.event) option)", desc.FullName())
}

// TopicNamed returns the contract topic with the given name (without namespace).
func TopicNamed(name string) (Topic, bool) {
	all, err := Topics()
	if err != nil {
		return Topic{}, false
	}
	for _, t := range all {
		if t.Name == name {
			return t, true
		}
	}
	return Topic{}, false
}

func scan(files *protoregistry.Files, types *protoregistry.Types) ([]Topic, error) {
	// The generated package registers its files when it is linked in; naming one of
	// its symbols keeps it linked even if nothing else in the program uses it.
	_ = agentfluxv1.E_Event
	var out []Topic
	var err error
	seen := map[string]protoreflect.FullName{}
	files.RangeFilesByPackage(Package, func(fd protoreflect.FileDescriptor) bool {
		err = eachMessage(fd.Messages(), func(md protoreflect.MessageDescriptor) error {
			opts, ok := md.Options().(*descriptorpb.MessageOptions)
			if !ok || opts == nil || !proto.HasExtension(opts, agentfluxv1.E_Event) {
				return nil
			}
			ev, _ := proto.GetExtension(opts, agentfluxv1.E_Event).(*agentfluxv1.EventOptions)
			if ev.GetTopic() == "" {
				return fmt.Errorf("%s: (agentflux.v1.event) names no topic", md.FullName())
			}
			if other, dup := seen[ev.GetTopic()]; dup {
				return fmt.Errorf("topic %s carries both %s and %s", ev.GetTopic(), other, md.FullName())
			}
			seen[ev.GetTopic()] = md.FullName()
			key := md.Fields().ByName(protoreflect.Name(ev.GetKeyField()))
			if key == nil || key.Kind() != protoreflect.StringKind || key.Cardinality() == protoreflect.Repeated {
				return fmt.Errorf("%s: key_field %q is not a string field of the message", md.FullName(), ev.GetKeyField())
			}
			mt, terr := types.FindMessageByName(md.FullName())
			if terr != nil {
				return fmt.Errorf("%s: no Go type registered: %w", md.FullName(), terr)
			}
			out = append(out, Topic{Name: ev.GetTopic(), Type: mt, KeyField: key})
			return nil
		})
		return err == nil
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no message of package %s has an (agentflux.v1.event) option", Package)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func eachMessage(mds protoreflect.MessageDescriptors, fn func(protoreflect.MessageDescriptor) error) error {
	for i := 0; i < mds.Len(); i++ {
		md := mds.Get(i)
		if err := fn(md); err != nil {
			return err
		}
		if err := eachMessage(md.Messages(), fn); err != nil {
			return err
		}
	}
	return nil
}
