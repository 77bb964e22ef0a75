// A Go client of the BackupService as monoctl and Monoskope's services would write it: the stubs
// are generated at test time from api/ (protoc-gen-go, protoc-gen-go-grpc) under the go_package
// the protos declare, into ./gen, which is not committed. Run by tests/it/go_client.rs.
module monoskope-backup.test/monoctl-client

go 1.26

require (
	github.com/finleap-connect/monoskope v0.0.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

replace github.com/finleap-connect/monoskope => ./gen
