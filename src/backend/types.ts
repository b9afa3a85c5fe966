// A volume is an NBD export seen from the controller's side: backends provide
// the data, filters change some operations and pass the rest through.
export type {
  Export as Backend,
  ExportCapabilities as Capabilities,
  Extent,
  BlockSizeConstraints,
} from "../../nbd/export.js";
