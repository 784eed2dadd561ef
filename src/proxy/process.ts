export interface ProxyProcessOptions { placeholder?: true }
export function parseProxyArgs(): ProxyProcessOptions { return {} }
export async function runProxyProcess(): Promise<void> {}
