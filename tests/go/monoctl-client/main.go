// Command monoctl-client calls every RPC of the BackupService the way monoctl connects to
// Monoskope's services: TLS with the service's CA, the bearer token as per-RPC credentials. It
// checks each answer's code (and, for refusals, that the message says why) and prints one line
// per check, "ok NAME" or "FAIL NAME: why"; it exits 1 when any check failed.
//
// Environment: MBK_SERVER (host:port), MBK_CA (PEM file of the service's CA), MBK_TOKEN (a
// valid bearer token).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	backupv1 "github.com/finleap-connect/monoskope/pkg/api/backup/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// bearer is the token as per-RPC credentials, sent only over TLS.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }

var failed bool

func check(name string, err error, want codes.Code, says string) {
	got := status.Code(err)
	msg := status.Convert(err).Message()
	switch {
	case got != want:
		failed = true
		fmt.Printf("FAIL %s: code %s (%s), want %s\n", name, got, msg, want)
	case says != "" && !strings.Contains(msg, says):
		failed = true
		fmt.Printf("FAIL %s: message %q does not say %q\n", name, msg, says)
	default:
		fmt.Printf("ok %s\n", name)
	}
}

func connect(tlsCfg *tls.Config, token string) (*grpc.ClientConn, error) {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg))}
	if token != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	return grpc.NewClient(os.Getenv("MBK_SERVER"), opts...)
}

func main() {
	pem, err := os.ReadFile(os.Getenv("MBK_CA"))
	if err != nil {
		fmt.Println("FAIL ca:", err)
		os.Exit(1)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fmt.Println("FAIL ca: no certificate in MBK_CA")
		os.Exit(1)
	}
	tlsCfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	anon, err := connect(tlsCfg, "")
	if err != nil {
		fmt.Println("FAIL connect:", err)
		os.Exit(1)
	}
	defer anon.Close()
	_, err = backupv1.NewBackupServiceClient(anon).ListBackups(ctx, &backupv1.ListBackupsRequest{})
	check("ListBackups without a token", err, codes.Unauthenticated, "")

	conn, err := connect(tlsCfg, os.Getenv("MBK_TOKEN"))
	if err != nil {
		fmt.Println("FAIL connect:", err)
		os.Exit(1)
	}
	defer conn.Close()
	c := backupv1.NewBackupServiceClient(conn)

	st, err := c.GetStatus(ctx, &backupv1.GetStatusRequest{})
	check("GetStatus", err, codes.OK, "")
	_ = st

	created, err := c.CreateBackup(ctx, &backupv1.CreateBackupRequest{Wait: true})
	check("CreateBackup wait", err, codes.OK, "")
	id := ""
	if err == nil {
		b := created.GetBackup()
		id = b.GetId()
		if b.GetState() != backupv1.OperationState_OPERATION_STATE_SUCCEEDED || b.GetEventCount() == 0 {
			failed = true
			fmt.Printf("FAIL CreateBackup result: state %s, %d events\n", b.GetState(), b.GetEventCount())
		} else {
			fmt.Printf("ok CreateBackup result %s %d events\n", id, b.GetEventCount())
		}
	}

	list, err := c.ListBackups(ctx, &backupv1.ListBackupsRequest{PageSize: 10})
	check("ListBackups", err, codes.OK, "")
	if err == nil {
		found := false
		for _, b := range list.GetBackups() {
			found = found || b.GetId() == id
		}
		if !found {
			failed = true
			fmt.Printf("FAIL ListBackups lists %d backups, not %s\n", len(list.GetBackups()), id)
		} else {
			fmt.Println("ok ListBackups lists the new backup")
		}
	}

	d, err := c.Drill(ctx, &backupv1.DrillRequest{BackupId: id})
	check("Drill", err, codes.OK, "")
	if err == nil && !d.GetOk() {
		failed = true
		fmt.Printf("FAIL Drill result: %v\n", d.GetProblems())
	}

	_, err = c.Restore(ctx, &backupv1.RestoreRequest{BackupId: "latest", ViaApi: true, Wait: true})
	check("Restore into a store that holds events", err, codes.FailedPrecondition, "holds")

	_, err = c.Restore(ctx, &backupv1.RestoreRequest{})
	check("Restore without a backup id", err, codes.InvalidArgument, "backup_id")

	_, err = c.Restore(ctx, &backupv1.RestoreRequest{BackupId: "not-a-backup-id"})
	check("Restore of a malformed id", err, codes.InvalidArgument, "is not a backup id")

	_, err = c.Drill(ctx, &backupv1.DrillRequest{BackupId: "20991231T000000000Z-ffffffff"})
	check("Drill of an unknown backup", err, codes.NotFound, "")

	if failed {
		os.Exit(1)
	}
}
