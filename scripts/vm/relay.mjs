// qemu's guestfwd runs this for each connection the guest opens: it joins the
// guest's connection (stdin/stdout) to one loopback port on the host.
import { connect } from "node:net";

const port = Number(process.argv[2]);
const socket = connect({ host: "127.0.0.1", port });
socket.setNoDelay(true);
process.stdin.pipe(socket);
socket.pipe(process.stdout);
socket.on("error", () => process.exit(1));
socket.on("close", () => process.exit(0));
process.stdin.on("end", () => socket.end());
