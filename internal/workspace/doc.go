// Package workspace moves a git repository between the host and a guest:
// on the host it lists the files to copy, writes them as one tar stream and
// imports a bundle of the guest's commits as a branch; for the guest it
// generates the bash scripts that unpack a stream into place and export the
// guest's changes.
//
// The generators (PrepareScript, ExportScript) are pure: they do
// no I/O. Host-side functions read the user's repository and, for
// ImportBundle, only add a ref to it: they never touch its working tree, its
// index or its checked-out branch. The package knows nothing of VMs, SSH or
// the daemon: the daemon runs the scripts over its own guest connection.
package workspace
