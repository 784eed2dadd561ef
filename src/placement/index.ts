// Front door of src/placement: the market scheduler — best-fit ranking and host reservations
// (pure), and its NATS transport (offers, confirm, release).
export { rankBestFit, fits, utilisationAfter, type HostCapacity, type MachineNeed } from './best-fit.js'
export { ReservationLedger, type Reservation, type HostResources } from './ledger.js'
export { PlacementMarket, serveOffers, parseRegions, PLACEMENT_SUBJECTS, type OfferRequest, type OfferReply, type Placement } from './market.js'
