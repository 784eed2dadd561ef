import 'reflect-metadata' // @peculiar/x509 needs it loaded first (reference dependency-facts §6)
import * as x509 from '@peculiar/x509'
import { randomBytes, webcrypto } from 'node:crypto'
import { link, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type tls from 'node:tls'
import { InvalidArgumentError, type Logger } from '../core/index.js'
import { generateCaCertificate, importPrivateKey, KEY_ALGORITHM, pem, SIGNING_ALGORITHM } from './certificates.js'

// Who may speak on the backhaul (issue 4: "links are authenticated and encrypted"): mutual TLS
// under one cluster CA. Every host's proxy holds a certificate whose subject CN is its host id,
// signed by the cluster CA; a worker knows which edge a stream came from by the client
// certificate, and an edge accepts a worker only if its certificate names the host it dialled.
// Operators give every host the same CA directory (`--cluster-ca`): with `ca.key` in it a proxy
// issues its own certificate at start; without it, they pass one (`--backhaul-cert/-key`).

export interface BackhaulIdentity {
  hostId: string
  /** The cluster CA certificate every peer must chain to. */
  caPem: string
  /** This host's certificate (CN = hostId, server and client auth) and its key. */
  certPem: string
  keyPem: string
}

export interface BackhaulIdentityOptions {
  /** Directory with the cluster CA: `ca.crt`, and `ca.key` to issue this host's certificate. */
  caDir: string
  hostId: string
  /** An operator-issued certificate and key for this host (else issued from `ca.key`). */
  certFile?: string
  keyFile?: string
  /** Create the CA when the directory holds none (default true). */
  create?: boolean
  logger?: Logger
}

const HOST_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/

/** The host id a peer certificate names (its subject CN), if any. */
export function hostIdOfCertificate(cert: tls.PeerCertificate | Record<string, never> | undefined | null): string | undefined {
  const cn = (cert as tls.PeerCertificate | undefined)?.subject?.CN
  const value = Array.isArray(cn) ? cn[0] : cn
  return typeof value === 'string' && HOST_ID.test(value) ? value : undefined
}

export async function loadBackhaulIdentity(options: BackhaulIdentityOptions): Promise<BackhaulIdentity> {
  if (!HOST_ID.test(options.hostId)) throw new InvalidArgumentError(`backhaul: host id ${JSON.stringify(options.hostId)} cannot name a certificate (letters, digits, . _ -)`)
  const { caPem, caKeyPem } = await loadOrCreateCa(options.caDir, options.create ?? true, options.logger)
  if (options.certFile !== undefined || options.keyFile !== undefined) {
    if (options.certFile === undefined || options.keyFile === undefined) throw new InvalidArgumentError('backhaul: give both a certificate and its key, or neither')
    const [certPem, keyPem] = await Promise.all([readFile(options.certFile, 'utf8'), readFile(options.keyFile, 'utf8')]).catch((err: Error) => {
      throw new InvalidArgumentError(`backhaul: cannot read the host certificate: ${err.message}`)
    })
    const cn = new x509.X509Certificate(certPem).subjectName.getField('CN')[0]
    if (cn !== options.hostId) throw new InvalidArgumentError(`backhaul: ${options.certFile} names host ${JSON.stringify(cn)}, not this host ${JSON.stringify(options.hostId)}`)
    return { hostId: options.hostId, caPem, certPem, keyPem }
  }
  if (caKeyPem === undefined) throw new InvalidArgumentError(`backhaul: ${join(options.caDir, 'ca.key')} is missing, so this host cannot issue its certificate; pass --backhaul-cert and --backhaul-key`)
  const issued = await issueHostCertificate(caPem, caKeyPem, options.hostId)
  return { hostId: options.hostId, caPem, ...issued }
}

/** Creates a cluster CA in `dir` unless one is there; returns its certificate (PEM). */
export async function createClusterCa(dir: string, logger?: Logger): Promise<string> {
  return (await loadOrCreateCa(dir, true, logger)).caPem
}

async function loadOrCreateCa(dir: string, create: boolean, logger: Logger | undefined): Promise<{ caPem: string; caKeyPem: string | undefined }> {
  const certPath = join(dir, 'ca.crt')
  const keyPath = join(dir, 'ca.key')
  const read = async () => {
    const caPem = await readFile(certPath, 'utf8').catch(() => undefined)
    const caKeyPem = await readFile(keyPath, 'utf8').catch(() => undefined)
    return { caPem, caKeyPem }
  }
  let found = await read()
  if (found.caPem !== undefined) return { caPem: found.caPem, caKeyPem: found.caKeyPem }
  if (!create) throw new InvalidArgumentError(`backhaul: no cluster CA at ${certPath}`)
  await mkdir(dir, { recursive: true })
  // Hosts started together may share the directory: the key is published with link() (atomic,
  // fails if another process got there first) and the certificate renamed in after it, so every
  // process ends up with the one CA that won.
  const suffix = randomBytes(6).toString('hex')
  const generated = await generateCa()
  const tmpKey = join(dir, `.ca.key.${suffix}`)
  const tmpCert = join(dir, `.ca.crt.${suffix}`)
  await writeFile(tmpKey, generated.keyPem, { mode: 0o600 })
  await writeFile(tmpCert, generated.certPem)
  try {
    await link(tmpKey, keyPath)
    await rename(tmpCert, certPath)
    logger?.info('created the cluster CA for the backhaul', { path: certPath })
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  } finally {
    await rm(tmpKey, { force: true })
    await rm(tmpCert, { force: true })
  }
  const deadline = Date.now() + 5000
  for (;;) {
    found = await read()
    if (found.caPem !== undefined) return { caPem: found.caPem, caKeyPem: found.caKeyPem }
    if (Date.now() > deadline) throw new InvalidArgumentError(`backhaul: ${keyPath} exists but ${certPath} never appeared; remove both to make a new cluster CA`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function generateCa(): Promise<{ certPem: string; keyPem: string }> {
  return generateCaCertificate(`Hangar cluster CA ${randomBytes(4).toString('hex')}`)
}

/** A certificate for one host (CN = its id), for both ends of a backhaul link, valid a year. */
export async function issueHostCertificate(caPem: string, caKeyPem: string, hostId: string): Promise<{ certPem: string; keyPem: string }> {
  const caCert = new x509.X509Certificate(caPem)
  const caKey = await importPrivateKey(caKeyPem)
  const keys = await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify']) as unknown as webcrypto.CryptoKeyPair
  const now = Date.now()
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomBytes(8).toString('hex'),
    subject: `CN=${hostId}`,
    issuer: caCert.subject,
    notBefore: new Date(now - 3_600_000),
    notAfter: new Date(now + 365 * 86_400_000),
    signingKey: caKey,
    publicKey: keys.publicKey,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth], false),
    ],
  })
  return { certPem: cert.toString('pem') + '\n', keyPem: pem('PRIVATE KEY', await webcrypto.subtle.exportKey('pkcs8', keys.privateKey as unknown as webcrypto.CryptoKey)) }
}
