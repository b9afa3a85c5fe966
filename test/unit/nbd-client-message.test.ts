// What `peercopy attach` says when nbd-client fails: the outputs are nbd-client
// 3.24's own (Debian 12), captured against peercopy serve.
import { describe, expect, it } from "vitest";
import { nbdClientMessage } from "../../src/attach/attach.js";

describe("nbdClientMessage", () => {
  it("keeps the server's refusal, without the negotiation dots", () => {
    const output =
      'Negotiation: ..Error: Unknown error returned by server. Server said: no export named "x"\nExiting.\n';
    expect(nbdClientMessage(output)).toBe(
      'Unknown error returned by server. Server said: no export named "x"',
    );
  });

  it("drops the oldstyle warning nbd-client prints for the empty export name", () => {
    const output = [
      "Warning: the oldstyle protocol is no longer supported.",
      "This method now uses the newstyle protocol with a default export",
      "Negotiation: ..size = 64MB",
      "Error: Failed to setup device, check dmesg",
      "",
      "Exiting.",
      "",
    ].join("\n");
    expect(nbdClientMessage(output)).toBe("Failed to setup device, check dmesg");
  });

  it("joins several lines and says when there is nothing", () => {
    expect(nbdClientMessage("Error: Socket failed: Connection refused\n")).toBe(
      "Socket failed: Connection refused",
    );
    expect(nbdClientMessage("a\nb\n")).toBe("a; b");
    expect(nbdClientMessage("")).toBe("no message");
  });
});
