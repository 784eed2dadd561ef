// Front door of src/placement: best-fit ranking (pure) for the market scheduler.
export { rankBestFit, fits, utilisationAfter, type HostCapacity, type MachineNeed } from './best-fit.js'
