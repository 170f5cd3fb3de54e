package consistency

import (
	"errors"
	"reflect"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
)

func TestWithVersionIncrement(t *testing.T) {
	inc := bson.E{Key: "$inc", Value: bson.D{{Key: "version", Value: int64(1)}}}
	tests := []struct {
		name   string
		update bson.D
		want   bson.D
		err    error
	}{
		{"empty", bson.D{}, bson.D{inc}, nil},
		{"set", bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 1}}}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "a", Value: 1}}}, inc}, nil},
		{"set a string that names the field", bson.D{{Key: "$set", Value: bson.M{"kind": "version"}}},
			bson.D{{Key: "$set", Value: bson.M{"kind": "version"}}, inc}, nil},
		{"merge inc", bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 2}}}},
			bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 2}, {Key: "version", Value: int64(1)}}}}, nil},
		{"merge inc map", bson.D{{Key: "$inc", Value: bson.M{"n": 2}}},
			bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 2}, {Key: "version", Value: int64(1)}}}}, nil},
		{"replacement", bson.D{{Key: "a", Value: 1}}, nil, ErrInvalidUpdate},
		{"sets version", bson.D{{Key: "$set", Value: bson.D{{Key: "version", Value: 9}}}}, nil, ErrInvalidUpdate},
		{"sets a version subfield", bson.D{{Key: "$set", Value: bson.D{{Key: "version.x", Value: 9}}}}, nil, ErrInvalidUpdate},
		{"incs version", bson.D{{Key: "$inc", Value: bson.M{"version": 1}}}, nil, ErrInvalidUpdate},
		{"renames to version", bson.D{{Key: "$rename", Value: bson.D{{Key: "v", Value: "version"}}}}, nil, ErrInvalidUpdate},
		{"operator with non-document", bson.D{{Key: "$set", Value: 1}}, nil, ErrInvalidUpdate},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := withVersionIncrement(tc.update, "version")
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if err == nil && !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}
